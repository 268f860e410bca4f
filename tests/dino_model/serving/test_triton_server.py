"""The real tritonserver on a `cpu` repository: gRPC answers equal in-process onnxruntime; clean failures."""

from __future__ import annotations

import os
import socket
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from dino_model.errors import ServingError
from dino_model.export.onnx import read_contract
from dino_model.export.parity import parity_inputs
from dino_model.runtime.processes import free_ports
from dino_model.serving.server import TritonServer
from dino_model.triton.config import RepositoryOptions
from dino_model.triton.repository import write_model_repository

pytestmark = pytest.mark.triton


def _grpc_infer(url: str, images: np.ndarray, datatype: str = "FP32", outputs=("embedding", "patch_tokens")):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    request = grpcclient.InferInput("images", list(images.shape), datatype)
    request.set_data_from_numpy(images)
    result = client.infer("dino", [request], outputs=[grpcclient.InferRequestedOutput(n) for n in outputs])
    return [result.as_numpy(n) for n in outputs]


def test_grpc_answers_match_in_process_onnxruntime(served, tiny_onnx: Path, digits_root: Path) -> None:
    import onnxruntime as ort

    inputs = parity_inputs(read_contract(tiny_onnx), image_dir=digits_root / "val", n_real=12, n_random=4)
    images = torch.cat(list(inputs.values())).numpy()
    session = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    expected = session.run(["embedding", "patch_tokens"], {"images": images})
    for batch in (images[:1], images):
        served_out = _grpc_infer(served.grpc_url, batch)
        for got, want in zip(served_out, expected, strict=True):
            assert got.shape == want[: len(batch)].shape and got.dtype == np.float32
            np.testing.assert_allclose(got, want[: len(batch)], atol=1e-5, rtol=0)


def test_ready_endpoint_and_configurable_metrics_port(served) -> None:
    with urllib.request.urlopen(f"{served.http_url}/v2/health/ready", timeout=5) as response:
        assert response.status == 200
    with urllib.request.urlopen(served.metrics_url, timeout=5) as response:
        text = response.read().decode()
    assert served.metrics_url.endswith(f":{served.ports['metrics']}/metrics")
    assert 'nv_inference_request_success{model="dino",version="1"}' in text


def test_bad_requests_fail_alone_and_the_server_stays_up(served) -> None:
    from tritonclient.utils import InferenceServerException

    good = np.random.default_rng(0).standard_normal((2, 3, 32, 32), dtype=np.float32)
    with pytest.raises(InferenceServerException, match=r"unexpected shape for input 'images'.*got \[2,3,16,16\]"):
        _grpc_infer(served.grpc_url, good[:, :, :16, :16])
    with pytest.raises(InferenceServerException, match="'FP64', but model 'dino' expects 'FP32'"):
        _grpc_infer(served.grpc_url, good.astype(np.float64), datatype="FP64")
    poisoned = good.copy()
    poisoned[0, 0, 0, 0] = np.nan
    outcomes: dict[int, object] = {}

    def send(i: int) -> None:  # concurrent, so that the dynamic batcher may put them in one batch
        try:
            outcomes[i] = _grpc_infer(served.grpc_url, poisoned if i == 0 else good, outputs=("embedding",))[0]
        except InferenceServerException as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert isinstance(outcomes[0], InferenceServerException) and "NaN or infinite" in str(outcomes[0])
    assert all(isinstance(outcomes[i], np.ndarray) and outcomes[i].shape == (2, 64) for i in range(1, 8))
    assert served.running


def test_a_taken_port_is_named(served, tmp_path: Path) -> None:
    http, metrics = free_ports(2)
    server = TritonServer(tmp_path, http_port=http, grpc_port=served.ports["grpc"], metrics_port=metrics)
    with pytest.raises(ServingError, match=rf"grpc port {served.ports['grpc']} on 127.0.0.1 is taken.*--grpc-port"):
        server.start()
    assert server.process is None


def test_a_gpu_repository_on_the_bundled_server_says_what_is_missing(tmp_path: Path, tiny_onnx: Path) -> None:
    write_model_repository(tiny_onnx, tmp_path, RepositoryOptions(flavour="gpu"))
    http, grpc, metrics = free_ports(3)
    server = TritonServer(tmp_path, http_port=http, grpc_port=grpc, metrics_port=metrics)
    with pytest.raises(ServingError, match="no onnxruntime backend: serve the `cpu` flavour"):
        server.start()
    assert not server.running and server.workdir is None


def test_missing_binary_or_repository(tmp_path: Path) -> None:
    with pytest.raises(ServingError, match="tritonserver binary .*nope does not exist"):
        TritonServer(tmp_path, binary=tmp_path / "nope").start()
    with pytest.raises(ServingError, match="model repository .*absent does not exist"):
        TritonServer(tmp_path / "absent").start()


def test_stop_is_clean(start_server, cpu_repository: Path) -> None:
    server = start_server(cpu_repository)
    pid = server.process.pid
    assert server.stop() == 0
    assert not server.running and server.workdir is None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _group_alive(pid):  # the Python backend stubs leave with it
        time.sleep(0.2)
    assert not _group_alive(pid)
    for port in server.ports.values():
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
