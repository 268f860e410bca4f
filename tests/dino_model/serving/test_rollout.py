"""Deployment with rollback on a live tritonserver, while clients keep sending requests.

A broken N+1 (truncated file, a graph onnxruntime cannot load, NaN weights, a failed promotion)
leaves N serving and the repository as it was; a good N+1 replaces N with zero failed requests.
The tests run in file order on one server: each failure leaves version 1 serving for the next.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from dino_model.errors import ExportError, ServingError
from dino_model.export.lineage import file_sha256
from dino_model.serving.client import EmbeddingClient
from dino_model.serving.loadtest import LoadGenerator
from dino_model.serving.rollout import RolloutError, deploy, promote, ready_versions, with_contract
from dino_model.serving.smoke import smoke_images
from dino_model.triton.config import config_parameters
from dino_model.triton.ensemble import EntryPoints
from dino_model.triton.repository import read_config, served_contract

pytestmark = pytest.mark.triton

# the models `triton-repo` writes beside `dino` (no unpack step: the cpu flavour preprocesses in Python)
ENTRY_POINTS = [name for name in EntryPoints("dino").all if name != EntryPoints("dino").unpack]


def _client(server) -> EmbeddingClient:
    """A client holding the server's admin key, as deploy's own client does."""
    return EmbeddingClient(server.grpc_url, headers=server.admin_headers)


def _snapshot(repository: Path) -> tuple[list[str], list[str], str]:
    model_dir = repository / "dino"
    return sorted(p.name for p in repository.iterdir()), sorted(p.name for p in model_dir.iterdir()), \
        (model_dir / "config.pbtxt").read_text()


def _broken_graph(source: Path, target: Path) -> Path:
    """Valid metadata, but an operator no runtime has: loads nowhere."""
    proto = onnx.load(str(source))
    proto.graph.node[0].op_type = "NotAnOnnxOperator"
    onnx.save(proto, str(target))
    return target


def _nan_weights(source: Path, target: Path) -> Path:
    """Loads and runs, but every embedding is NaN."""
    proto = onnx.load(str(source))
    weight = next(t for t in proto.graph.initializer if t.name.endswith("patch_embed.proj.bias"))
    weight.CopyFrom(numpy_helper.from_array(np.full_like(numpy_helper.to_array(weight), np.nan), weight.name))
    onnx.save(proto, str(target))
    return target


def test_a_truncated_file_is_refused_before_the_server_sees_it(live, tiny_onnx: Path, tmp_path: Path) -> None:
    server, repository = live
    before = _snapshot(repository)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(tiny_onnx.read_bytes()[:4000])
    with pytest.raises(ExportError, match="not a readable ONNX file"):
        deploy(truncated, repository, url=server.grpc_url)
    assert _snapshot(repository) == before and ready_versions(_client(server)) == [1]


def test_a_version_that_fails_to_load_leaves_n_serving(live, tiny_onnx: Path, tmp_path: Path) -> None:
    server, repository = live
    before = _snapshot(repository)
    broken = _broken_graph(tiny_onnx, tmp_path / "broken.onnx")
    with LoadGenerator(server.grpc_url, clients=2) as load, \
            pytest.raises(ServingError, match=r"version 2 of 'dino' was not deployed: it failed to load .*"
                                              r"NotAnOnnxOperator.*version\(s\) \[1\] keep serving"):
        deploy(broken, repository, url=server.grpc_url)
    assert load.report.errors == 0 and load.report.versions.keys() == {"1"}
    assert _snapshot(repository) == before and ready_versions(_client(server)) == [1]


def test_a_version_answering_nan_leaves_n_serving(live, tiny_onnx: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture, run_cli) -> None:
    """The `cpu` backend refuses to load a graph answering NaN, so the candidate fails to load (gpu: smoke test)."""
    server, repository = live
    before = _snapshot(repository)
    nan = _nan_weights(tiny_onnx, tmp_path / "nan.onnx")
    code = run_cli(["deploy", "--onnx", str(nan), "--repository", str(repository), "--url", server.grpc_url])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "failed to load" in err and "non-finite embeddings" in err and "[1] keep serving" in err
    assert _snapshot(repository) == before and ready_versions(_client(server)) == [1]


def test_a_failed_promotion_rolls_back_to_n(live, tiny_onnx: Path, tmp_path: Path) -> None:
    """The second stage on its own: N+1 fails to load beside N inside the served model."""
    server, repository = live
    before = _snapshot(repository)
    client = _client(server)
    broken = _broken_graph(tiny_onnx, tmp_path / "broken.onnx")
    model_dir = repository / "dino"
    config = with_contract(read_config(model_dir), served_contract(broken))
    images = smoke_images(client.served.contract)
    with LoadGenerator(server.grpc_url, clients=2) as load, pytest.raises(RolloutError, match="failed to load"):
        promote(client, model_dir, broken, config, version=2, serving=[1], flavour="cpu", images=images,
                reference=np.zeros((len(images), 64), np.float32), tolerance=1e-5, load_timeout_s=120)
    assert load.report.errors == 0, load.report.error_samples
    assert _snapshot(repository) == before and ready_versions(client) == [1]


def test_a_good_version_replaces_n_with_zero_failed_requests(live, tiny_onnx_fp16: Path) -> None:
    import onnxruntime as ort

    server, repository = live
    client = _client(server)
    with LoadGenerator(server.grpc_url, clients=3, batch_size=2) as load:
        result = deploy(tiny_onnx_fp16, repository, url=server.grpc_url)
        deadline = time.monotonic() + 30
        while load.report.versions.get("2", 0) < 20 and time.monotonic() < deadline:
            time.sleep(0.1)  # keep the clients going on the new version for a while
    print(f"\nrollout under load: {load.report.to_dict()}")
    assert load.report.errors == 0, load.report.error_samples
    assert load.report.versions["1"] > 0 and load.report.versions["2"] >= 20
    assert (result["status"], result["version"], result["previous_versions"]) == ("deployed", 2, [1])
    assert result["candidate_smoke"]["passed"] and result["smoke"]["passed"]
    assert ready_versions(client) == [2] and not client.raw.is_model_ready("dino", "1")
    assert sorted(p.name for p in repository.iterdir()) == sorted(["dino", *ENTRY_POINTS])  # the candidate is gone
    params = config_parameters(read_config(repository / "dino"))
    assert params["onnx_sha256"] == file_sha256(tiny_onnx_fp16) and params["dino.precision"] == "fp16"
    assert json.loads(params["metrics"])
    images = smoke_images(client.served.contract, n_random=3)
    expected = ort.InferenceSession(str(tiny_onnx_fp16), providers=["CPUExecutionProvider"]).run(
        ["embedding"], {"images": images})[0]
    np.testing.assert_allclose(client.infer(images)["embedding"], expected, atol=1e-5, rtol=0)


def test_deploy_sends_the_admin_key_of_a_restricted_repository_api(start_server, cpu_repository: Path,
                                                                    tiny_onnx: Path, run_cli, capsys,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The cluster's Triton restricts the repository API to callers with a key header (k8s/base/triton)."""
    monkeypatch.delenv("TRITON_ADMIN_KEY", raising=False)
    server = start_server(cpu_repository, admin_key="s3cret")
    with pytest.raises(ServingError, match="reading the repository index was refused .*restricted.*admin-key"):
        deploy(tiny_onnx, cpu_repository, url=server.grpc_url)
    monkeypatch.setenv("TRITON_ADMIN_KEY", "s3cret")
    code = run_cli(["deploy", "--onnx", str(tiny_onnx), "--repository", str(cpu_repository), "--url", server.grpc_url])
    assert code == 0 and json.loads(capsys.readouterr().out)["serving_versions"] == [2]


def test_deploy_puts_a_first_version_in_service_then_rolls_the_next_out(start_server, tmp_path: Path,
                                                                        tiny_onnx: Path, run_cli, capsys) -> None:
    """A new server serves nothing: `deploy` writes, loads and smoke-tests version 1, then rolls out 2."""
    repository = tmp_path / "repository"
    repository.mkdir()
    server = start_server(repository)
    deploy_cli = ["deploy", "--onnx", str(tiny_onnx), "--repository", str(repository), "--url", server.grpc_url,
                  "--flavour", "cpu"]
    assert run_cli(deploy_cli) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["status"] == "deployed" and first["version"] == 1 and first["serving_versions"] == [1]
    assert first["lineage"]["data_version"] and first["smoke"]["passed"]
    assert run_cli(deploy_cli) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["version"] == 2 and second["previous_versions"] == [1] and second["serving_versions"] == [2]
