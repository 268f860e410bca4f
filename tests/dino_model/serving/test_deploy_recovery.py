"""A deploy killed with SIGKILL at any step is finished by the next deploy or `deploy --recover`, under load.

Each case runs the real `dino-mlops deploy` in a subprocess against a real tritonserver, stops it at a
named point (DINO_DEPLOY_PAUSE_AT), kills it with SIGKILL while gRPC clients keep sending requests,
and recovers under the same load (`dino-mlops deploy --recover`, or `recover()` in-process).
Afterwards exactly one version is READY (the old one, or the new one when it had passed every
check), no candidate model, untested folder or temporary file is left, config.pbtxt is not pinned,
and no client request failed. Cases run in order on one server, each from the state the previous
one left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dino_model.export.lineage import VERIFIED_KEY, file_sha256
from dino_model.export.triton_config import config_parameters
from dino_model.export.triton_repository import read_config, version_folders
from dino_model.serving.client import EmbeddingClient
from dino_model.serving.loadtest import LoadGenerator
from dino_model.serving.rollout import (
    JOURNAL_FILE,
    PAUSE_ENV,
    PAUSE_POINTS,
    PROMOTED,
    deploy,
    ready_versions,
    recover,
)

pytestmark = pytest.mark.triton

ROLLED_FORWARD = ("promoted", "final-written")  # the new version had passed both smoke tests
RECOVERED_BY_CLI = ("both-loaded", "final-written")  # one each way through `dino-mlops deploy --recover`
PAUSE_TIMEOUT_S = 240.0


def _cli() -> list[str]:
    entry = Path(sys.executable).parent / "dino-mlops"
    return [str(entry)] if entry.is_file() else [sys.executable, "-m", "dino_model.cli"]


def _paused_deploy(onnx_path: Path, repository: Path, url: str, point: str, log: Path) -> subprocess.Popen:
    """`dino-mlops deploy`, started and waited for until it reports the pause at `point`."""
    env = dict(os.environ, **{PAUSE_ENV: point})
    with log.open("w") as err:
        proc = subprocess.Popen([*_cli(), "deploy", "--onnx", str(onnx_path), "--repository", str(repository),
                                 "--url", url], stdout=subprocess.DEVNULL, stderr=err, env=env)
    deadline = time.monotonic() + PAUSE_TIMEOUT_S
    while f"deploy paused at {point}" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            _kill(proc)
            pytest.fail(f"deploy did not pause at {point} (exit code {proc.returncode}):\n{log.read_text()[-2000:]}")
        time.sleep(0.2)
    return proc


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()


def _run(argv: list[str]) -> dict:
    done = subprocess.run([*_cli(), *argv], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def _answering_version(client: EmbeddingClient) -> str:
    import tritonclient.grpc as grpcclient

    images = np.zeros((1, *client.served.contract.input_shape), np.float32)
    request = grpcclient.InferInput("images", list(images.shape), "FP32")
    request.set_data_from_numpy(images)
    return client.call("inference", client.raw.infer, client.model_name, [request]).get_response().model_version


def _state(repository: Path) -> dict:
    model_dir = repository / "dino"
    return {"root": sorted(p.name for p in repository.iterdir()), "files": sorted(p.name for p in model_dir.iterdir()),
            "folders": version_folders(model_dir), "config": (model_dir / "config.pbtxt").read_text()}


def _check_recovered(server, repository: Path, before: dict, point: str, onnx_path: Path) -> int:
    """Assert the repository and server are in the single-version state `point` calls for; returns that version."""
    client = EmbeddingClient(server.grpc_url, headers=server.admin_headers)
    after = _state(repository)
    old, new = before["folders"][-1], before["folders"][-1] + 1
    expected = new if point in ROLLED_FORWARD else old
    assert ready_versions(client) == [expected]
    index = client.call("index", client.raw.get_model_repository_index, as_json=True).get("models", [])
    assert not [m for m in index if m["name"] != "dino" and m.get("state") == "READY"], index
    assert after["root"] == ["dino"]  # the candidate model's folder is gone
    folders = [*before["folders"], new] if expected == new else before["folders"]
    assert after["folders"] == folders
    assert after["files"] == sorted(["config.pbtxt", *map(str, folders)])  # no journal, staging or temp files
    config = read_config(repository / "dino")
    assert config["version_policy"] == {"latest": {"num_versions": 1}}  # not pinned to any version
    if expected == old:
        assert after["config"] == before["config"]
    else:
        params = config_parameters(config)
        assert params["onnx_sha256"] == file_sha256(onnx_path) and params[VERIFIED_KEY]
    assert _answering_version(client) == str(expected)
    return expected


@pytest.mark.parametrize("point", ["candidate-loaded", "version-written", "both-loaded", "promoted",
                                   "final-written"])
def test_a_killed_deploy_is_recovered_under_load(live, tiny_onnx: Path, tmp_path: Path, point: str) -> None:
    assert point in PAUSE_POINTS
    server, repository = live
    client = EmbeddingClient(server.grpc_url, headers=server.admin_headers)
    before = _state(repository)
    assert ready_versions(client) == [before["folders"][-1]]
    deploying = _paused_deploy(tiny_onnx, repository, server.grpc_url, point, tmp_path / "deploy.log")
    with LoadGenerator(server.grpc_url, clients=2, batch_size=2) as load:
        _kill(deploying)
        assert deploying.returncode == -signal.SIGKILL
        if point != "candidate-loaded":
            journal = json.loads((repository / "dino" / JOURNAL_FILE).read_text())
            assert journal["phase"] == (PROMOTED if point in ROLLED_FORWARD else "promoting")
        if point in ("both-loaded", "promoted", "final-written"):  # the state a kill used to leave behind
            assert len(ready_versions(client)) == 2
        if point in RECOVERED_BY_CLI:
            result = _run(["deploy", "--recover", "--repository", str(repository), "--url", server.grpc_url])
        else:  # the same function in this process: no interpreter start-up under load on a small machine
            result = recover(repository, url=server.grpc_url)
        expected = _check_recovered(server, repository, before, point, tiny_onnx)
    print(f"\nkilled at {point}, {result['action']}: {load.report.to_dict()}")
    assert load.report.errors == 0, load.report.error_samples
    assert result["status"] == ("cleaned" if point == "candidate-loaded" else "recovered")
    assert result["serving_versions"] == [expected]
    again = recover(repository, url=server.grpc_url)
    assert again["status"] == "clean" and again["serving_versions"] == [expected]


def test_the_next_deploy_recovers_first(live, tiny_onnx_fp16: Path, tmp_path: Path) -> None:
    """Killed with N and N+1 both READY and config.pbtxt pinned; a plain deploy rolls back, then deploys."""
    server, repository = live
    before = _state(repository)
    old = before["folders"][-1]
    deploying = _paused_deploy(tiny_onnx_fp16, repository, server.grpc_url, "both-loaded", tmp_path / "deploy.log")
    with LoadGenerator(server.grpc_url, clients=2, batch_size=2) as load:
        _kill(deploying)
        assert "specific" in read_config(repository / "dino")["version_policy"]
        result = deploy(tiny_onnx_fp16, repository, url=server.grpc_url)
    assert load.report.errors == 0, load.report.error_samples
    assert result["recovered"]["action"] == f"rolled back to version(s) [{old}]"
    assert (result["version"], result["previous_versions"], result["serving_versions"]) == (old + 1, [old], [old + 1])
    assert _state(repository)["files"] == sorted(["config.pbtxt", *map(str, [*before["folders"], old + 1])])
    assert read_config(repository / "dino")["version_policy"] == {"latest": {"num_versions": 1}}
