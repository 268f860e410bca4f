"""Model control is closed to callers without the admin key; only the project's own deploy holds it.

A load request may carry a config and a `model.py` inline, which the Python backend runs as the
server's user, so these tests send exactly that (a model.py that writes a marker file when imported)
over HTTP and gRPC to real tritonservers started the project's ways (TritonServer, `dino-mlops
serve`; the local pipeline's server in tests/pipelines/test_local_server.py) and check the marker
never appears, while `deploy` and `release` still roll versions out with the key they find. Also
here: no request is answered with NaN.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import onnx
import pytest
from fixtures.triton import http_load, injected
from onnx import numpy_helper

from dino_model.errors import ServingError
from dino_model.runtime.processes import free_ports
from dino_model.serving.admin_key import ADMIN_KEY_ENV, admin_key_path
from dino_model.serving.client import EmbeddingClient
from dino_model.serving.deploy import deploy
from dino_model.serving.rollout import ready_versions
from dino_model.triton.config import RepositoryOptions
from dino_model.triton.repository import write_model_repository

pytestmark = pytest.mark.triton


# What Triton's onnxruntime backend (the `gpu` flavour) does: answer whatever the graph computes.
UNCHECKED_BACKEND = '''from pathlib import Path

import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def execute(self, requests):
        responses = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, "images").as_numpy()
            (embedding,) = self.session.run(["embedding"], {"images": images})
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("embedding", embedding)]))
        return responses
'''


def _grpc_load(grpc_url: str, marker: Path, name: str, headers: dict[str, str] | None = None) -> None:
    import tritonclient.grpc as grpcclient

    config, code = injected(marker, name)
    grpcclient.InferenceServerClient(grpc_url).load_model(name, config=config, files={"file:1/model.py": code},
                                                          headers=headers, client_timeout=120)


def _images(n: int = 2, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(0).uniform(-1, 1, (n, 3, 32, 32)) * scale).astype(np.float32)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, tiny_onnx: Path, triton_tools):
    """A tritonserver on a `cpu` repository holding version 1, started as every server of the project is."""
    repository = triton_tools.write_cpu_repository(tiny_onnx, tmp_path_factory.mktemp("guarded") / "repository")
    server = triton_tools.start(repository)
    try:
        yield server
    finally:
        server.stop()


def test_an_inline_model_py_over_http_is_refused_without_the_key(guarded, tmp_path: Path) -> None:
    marker = tmp_path / "ran-over-http"
    status, body = http_load(guarded.http_url, marker)
    guessed, _ = http_load(guarded.http_url, marker, headers={"admin-key": "a-guess"})
    assert not marker.exists(), "the uploaded model.py ran inside tritonserver"
    assert status == guessed == 403 and "restricted" in body and "admin-key" in body
    with urllib.request.urlopen(f"{guarded.http_url}/v2/models/dino/ready", timeout=5) as response:
        assert response.status == 200  # health and metadata stay open


def test_an_inline_model_py_over_grpc_is_refused_without_the_key(guarded, tmp_path: Path) -> None:
    from tritonclient.utils import InferenceServerException

    marker = tmp_path / "ran-over-grpc"
    refusals = []
    for headers in (None, {"triton-grpc-protocol-admin-key": "a-guess"}):
        try:
            _grpc_load(guarded.grpc_url, marker, "injected_grpc", headers=headers)
        except InferenceServerException as exc:
            refusals.append(str(exc))
    assert not marker.exists(), "the uploaded model.py ran inside tritonserver"
    assert len(refusals) == 2 and all("restricted, expecting header 'triton-grpc-protocol-admin-key'" in r
                                      for r in refusals), refusals
    embedding = EmbeddingClient(guarded.grpc_url).infer(_images())["embedding"]  # inference stays open
    assert embedding.shape == (2, 64) and np.isfinite(embedding).all()


def test_the_key_is_private_to_its_owner_and_deploy_finds_it(guarded, tiny_onnx_fp16: Path, run_cli, capsys,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from tritonclient.utils import InferenceServerException

    monkeypatch.delenv(ADMIN_KEY_ENV, raising=False)
    key_file = admin_key_path(guarded.repository)
    assert key_file == guarded.repository.with_name("repository.admin-key")
    assert key_file.stat().st_mode & 0o777 == 0o600 and key_file.read_text().strip() == guarded.admin_key
    with pytest.raises(InferenceServerException, match="restricted"):
        EmbeddingClient(guarded.grpc_url).raw.get_model_repository_index()
    code = run_cli(["deploy", "--onnx", str(tiny_onnx_fp16), "--repository", str(guarded.repository),
                    "--url", guarded.grpc_url])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["status"] == "deployed" and result["serving_versions"] == [2]


def test_release_on_a_key_given_by_the_operator(start_server, tmp_path: Path, tiny_onnx: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """All interfaces with an operator's key (as on the cluster): the first release loads with that key."""
    from tritonclient.utils import InferenceServerException

    repository = tmp_path / "repository"
    repository.mkdir()
    key = "an-operator-key-of-at-least-32-characters"
    monkeypatch.setenv(ADMIN_KEY_ENV, key)
    server = start_server(repository, address="0.0.0.0", admin_key=key)
    assert not admin_key_path(repository).exists()  # a given key is never written anywhere
    result = deploy(tiny_onnx, repository, url=server.grpc_url, flavour="cpu")
    assert result["status"] == "deployed" and result["serving_versions"] == [1]
    client = EmbeddingClient(server.grpc_url)
    with pytest.raises(InferenceServerException, match="restricted"):
        client.raw.unload_model("dino")
    assert ready_versions(EmbeddingClient(server.grpc_url, headers=server.admin_headers)) == [1]


def test_a_short_key_is_refused_on_a_network_address_and_kept_on_loopback(tmp_path: Path) -> None:
    from dino_model.errors import ConfigError
    from dino_model.serving.admin_key import MIN_NETWORK_KEY_LENGTH
    from dino_model.serving.server import TritonServer

    short = "k" * (MIN_NETWORK_KEY_LENGTH - 1)
    with pytest.raises(ConfigError, match=f"has {len(short)} characters; a server on a network address needs at "
                                          f"least {MIN_NETWORK_KEY_LENGTH}"):
        TritonServer(tmp_path, address="0.0.0.0", admin_key=short)
    assert TritonServer(tmp_path, address="127.0.0.1", admin_key=short).admin_key == short
    assert TritonServer(tmp_path, address="0.0.0.0", admin_key=short + "k").admin_key == short + "k"


def test_serve_on_a_non_loopback_address_needs_a_key(tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    repository.mkdir()
    env = {k: v for k, v in os.environ.items() if k != ADMIN_KEY_ENV}
    http, grpc, metrics = free_ports(3)
    serve = [sys.executable, "-m", "dino_model.cli", "serve", "--repository", str(repository), "--http-port",
             str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
    loose = tmp_path / "key"
    loose.write_text("a-key\n")
    loose.chmod(0o644)
    for extra, expected in ((["--address", "0.0.0.0"], "serving on 0.0.0.0 would open Triton's model control"),
                            (["--admin-key-file", str(loose)], f"chmod 600 {loose}")):
        code, stderr = _run_briefly([*serve, *extra], env)
        assert code == 2, stderr
        assert stderr.strip().count("\n") == 0 and expected in stderr, stderr
    assert not admin_key_path(repository).exists()


def _run_briefly(cmd: list[str], env: dict[str, str], timeout_s: float = 60) -> tuple[int | None, str]:
    """Run a command that should exit at once; one still running after timeout_s is killed (None)."""
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        _, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
        return None, f"still running after {timeout_s} s: {stderr[-500:]}"
    return process.returncode, stderr


def test_extreme_pixels_are_refused_instead_of_answered_with_nan(served) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    def send(images: np.ndarray) -> np.ndarray:
        client = grpcclient.InferenceServerClient(served.grpc_url)
        return client.infer("dino", [_infer_input(images)]).as_numpy("embedding")

    extreme = _images(scale=3e38)  # finite float32 pixels (< 3.4e38); the graph turns them into NaN
    extreme[0, 0, 0, 0] = 3e38
    assert np.isfinite(extreme).all()
    outcomes: dict[int, object] = {}

    def run(i: int) -> None:  # concurrent, so that the dynamic batcher may put them in one batch
        try:
            outcomes[i] = send(extreme if i == 0 else _images())
        except InferenceServerException as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert isinstance(outcomes[0], InferenceServerException), f"answered {outcomes[0]!r}"
    assert "out of range: |pixel| up to 3e+38" in str(outcomes[0])
    assert all(isinstance(outcomes[i], np.ndarray) and np.isfinite(outcomes[i]).all() for i in range(1, 6))
    with pytest.raises(ServingError, match="inference on model 'dino' failed.*out of range"):
        EmbeddingClient(served.grpc_url).infer(extreme)
    assert served.running


def _nan_weights(source: Path, target: Path) -> Path:
    """A graph that loads and runs, but answers NaN for every image."""
    proto = onnx.load(str(source))
    bias = next(t for t in proto.graph.initializer if t.name.endswith("patch_embed.proj.bias"))
    bias.CopyFrom(numpy_helper.from_array(np.full_like(numpy_helper.to_array(bias), np.nan), bias.name))
    onnx.save(proto, str(target))
    return target


def _nan_for_negative_pixels(source: Path, target: Path) -> Path:
    """A graph that answers a blank image well, but NaN for any image with a negative (normalised) pixel."""
    proto = onnx.load(str(source))
    graph = proto.graph
    pixels = graph.input[0].name
    for node in graph.node:
        node.input[:] = [f"{pixels}_sqrt" if name == pixels else name for name in node.input]
    graph.node.insert(0, onnx.helper.make_node("Sqrt", [pixels], [f"{pixels}_sqrt"]))
    onnx.save(proto, str(target))
    return target


def test_nan_answers_are_refused_by_the_server_and_by_the_client(start_server, tmp_path: Path,
                                                                 tiny_onnx: Path) -> None:
    """`checked`, `broken`: the project's Python backend; `unchecked`: a backend answering what the graph gives."""
    from tritonclient.utils import InferenceServerException

    repository = tmp_path / "repository"
    models = {"checked": _nan_for_negative_pixels(tiny_onnx, tmp_path / "sqrt.onnx"),
              "unchecked": _nan_weights(tiny_onnx, tmp_path / "nan.onnx")}
    for name, path in models.items():
        write_model_repository(path, repository, RepositoryOptions(flavour="cpu", model_name=name, max_batch_size=4,
                                                                   preferred_batch_sizes=[]))
    (repository / "unchecked" / "1" / "model.py").write_text(UNCHECKED_BACKEND)
    server = start_server(repository, models=list(models))
    images = _images()  # in range, half of the pixels negative

    checked = EmbeddingClient(server.grpc_url, "checked")
    with pytest.raises(InferenceServerException, match="non-finite embeddings: output 'embedding' holds 128 NaN"):
        checked.raw.infer("checked", [_infer_input(images)])
    with pytest.raises(ServingError, match="non-finite embeddings"):
        checked.infer(images)
    assert np.isfinite(checked.infer(np.abs(images))["embedding"]).all()

    unchecked = EmbeddingClient(server.grpc_url, "unchecked")
    assert np.isnan(unchecked.raw.infer("unchecked", [_infer_input(images)]).as_numpy("embedding")).all()
    with pytest.raises(ServingError, match="'embedding' of model 'unchecked' .* answered 128 non-finite values"):
        unchecked.infer(images)
    poisoned = images.copy()
    poisoned[1, 2, 3, 4] = np.inf
    with pytest.raises(ServingError, match="images hold 1 NaN or infinite values"):
        unchecked.infer(poisoned)

    write_model_repository(models["unchecked"], repository, RepositoryOptions(flavour="cpu", model_name="broken"))
    admin = EmbeddingClient(server.grpc_url, "broken", headers=server.admin_headers)
    for _ in range(2):  # a model whose warm-up failed crashed tritonserver 2.51 when loaded again
        with pytest.raises(ServingError, match="non-finite embeddings for a blank image: output 'embedding'"):
            admin.call("loading", admin.raw.load_model, "broken")
    assert server.running and np.isfinite(checked.infer(np.abs(images))["embedding"]).all()


def _infer_input(images: np.ndarray):
    import tritonclient.grpc as grpcclient

    request = grpcclient.InferInput("images", list(images.shape), "FP32")
    request.set_data_from_numpy(images)
    return request
