"""A deploy killed with SIGKILL at any step never lets an unpinned request reach an unpromoted version,
and is finished without a person: by the server's next start, a quality gate or retraining check given
the repository, the next deploy, or `deploy --recover`.

Each case runs the real `dino-mlops deploy` in a subprocess against a real tritonserver, stops it at a
named point (DINO_DEPLOY_PAUSE_AT), kills it with SIGKILL while gRPC clients keep sending unpinned
requests, checks that only the old version answered them (the new one too once the kill came after
the switch) and that never two versions were READY, then recovers. Afterwards exactly one version is
READY (the old one, or the new one when it had passed the candidate smoke test and been promoted),
no candidate model, untested folder or temporary file is left, config.pbtxt is not pinned, and no
client request failed. Cases run in order on one server, each from the state the previous one left.
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

from dino_model.errors import ServingError
from dino_model.export.lineage import VERIFIED_KEY, file_sha256
from dino_model.serving.client import EmbeddingClient
from dino_model.serving.gate import served_lineage, serving_score
from dino_model.serving.loadtest import LoadGenerator
from dino_model.serving.rollout import (
    JOURNAL_FILE,
    PAUSE_ENV,
    PAUSE_POINTS,
    PROMOTED,
    UNFINISHED_KEY,
    deploy,
    ready_versions,
    recover,
)
from dino_model.triton.config import config_parameters
from dino_model.triton.ensemble import EntryPoints
from dino_model.triton.repository import read_config, version_folders
from pipelines.retrain import deployed_data_version

pytestmark = pytest.mark.triton

# the models `triton-repo` writes beside `dino` (no unpack step: the cpu flavour preprocesses in Python)
ENTRY_POINTS = [name for name in EntryPoints("dino").all if name != EntryPoints("dino").unpack]

ROLLED_FORWARD = ("promoted", "final-written", "final-loaded")  # the new version had passed the candidate test
SWITCHED = ("final-loaded",)  # killed after unpinned requests had been switched to the new version
# who finishes the deploy killed at each point, without `--recover` except for one case
RECOVERED_BY = {"candidate-loaded": "recover()", "version-written": "server start", "promoted": "quality gate",
                "final-written": "deploy --recover", "final-loaded": "retraining check"}
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
    assert not [m for m in index if m["name"] not in ("dino", *ENTRY_POINTS) and m.get("state") == "READY"], index
    assert after["root"] == sorted(["dino", *ENTRY_POINTS])  # the candidate model's folder is gone
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


def _recover_by(who: str, server, repository: Path) -> dict:
    """Finish the killed deploy the way `who` does; returns the recovery's result (status, action, versions)."""
    client = EmbeddingClient(server.grpc_url, headers=server.admin_headers)
    if who == "server start":
        server.stop()
        server.start()  # finishes the journal it finds once ready
        return {"status": "recovered", "action": "at start-up", "serving_versions":
                ready_versions(EmbeddingClient(server.grpc_url, headers=server.admin_headers))}
    if who == "quality gate":
        assert served_lineage(server.grpc_url, "dino", repository=repository, headers=server.admin_headers)
    elif who == "retraining check":
        assert deployed_data_version(server.grpc_url, repository=repository)
    elif who == "deploy --recover":
        return _run(["deploy", "--recover", "--repository", str(repository), "--url", server.grpc_url])
    else:  # the same function in this process: no interpreter start-up under load on a small machine
        return recover(repository, url=server.grpc_url)
    return {"status": "recovered", "action": f"by the {who}", "serving_versions": ready_versions(client)}


def _legacy_two_ready(server, repository: Path, old: int) -> None:
    """What a deploy killed by older code left: old and new versions READY together, unpinned to the new."""
    client = EmbeddingClient(server.grpc_url, headers=server.admin_headers)
    config = read_config(repository / "dino") | {"version_policy": {"specific": {"versions": [old, old + 1]}}}
    config["parameters"].pop(UNFINISHED_KEY)
    client.raw.load_model("dino", config=json.dumps(config), headers=client.headers)
    assert ready_versions(client) == [old, old + 1]


@pytest.mark.parametrize("point", list(RECOVERED_BY))
def test_a_killed_deploy_never_serves_an_unpromoted_version_and_is_recovered(live, tiny_onnx: Path, tmp_path: Path,
                                                                           point: str) -> None:
    assert point in PAUSE_POINTS
    server, repository = live
    client = EmbeddingClient(server.grpc_url, headers=server.admin_headers)
    before = _state(repository)
    old = before["folders"][-1]
    assert ready_versions(client) == [old]
    deploying = _paused_deploy(tiny_onnx, repository, server.grpc_url, point, tmp_path / "deploy.log")
    with LoadGenerator(server.grpc_url, clients=2, batch_size=2) as load:
        _kill(deploying)
        assert deploying.returncode == -signal.SIGKILL
        if point != "candidate-loaded":
            journal = json.loads((repository / "dino" / JOURNAL_FILE).read_text())
            assert journal["phase"] == (PROMOTED if point in ROLLED_FORWARD else "promoting")
        current = old + 1 if point in SWITCHED else old
        assert ready_versions(client) == [current]  # never two versions READY under the served name
        deadline = time.monotonic() + 10
        while sum(load.report.versions.values()) < 20 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert load.report.versions.keys() == {str(current)}  # unpinned requests: only the promoted version
        assert _answering_version(client) == str(current)
        if point != "version-written":
            result = _recover_by(RECOVERED_BY[point], server, repository)
    if point == "version-written":  # a restart cannot happen under load
        _legacy_two_ready(server, repository, old)
        with pytest.raises(ServingError, match=r"model 'dino' at .* is in the middle of a deploy \(versions "
                                               rf"{old}, {old + 1} are READY"):
            serving_score(server.grpc_url, "dino", "knn_top1")  # a gate with only the URL refuses to read it
        result = _recover_by(RECOVERED_BY[point], server, repository)
    expected = _check_recovered(server, repository, before, point, tiny_onnx)
    print(f"\nkilled at {point}, {result['action']}: {load.report.to_dict()}")
    assert load.report.errors == 0, load.report.error_samples
    assert result["serving_versions"] == [expected]
    again = recover(repository, url=server.grpc_url)
    assert again["status"] == "clean" and again["serving_versions"] == [expected]


def test_the_next_deploy_recovers_first(live, tiny_onnx_fp16: Path, tmp_path: Path) -> None:
    """Killed with N+1 written and config.pbtxt pinned; a plain deploy rolls back, then deploys."""
    server, repository = live
    before = _state(repository)
    old = before["folders"][-1]
    deploying = _paused_deploy(tiny_onnx_fp16, repository, server.grpc_url, "version-written",
                               tmp_path / "deploy.log")
    with LoadGenerator(server.grpc_url, clients=2, batch_size=2) as load:
        _kill(deploying)
        pinned = read_config(repository / "dino")
        assert "specific" in pinned["version_policy"] and config_parameters(pinned)[UNFINISHED_KEY] == str(old + 1)
        result = deploy(tiny_onnx_fp16, repository, url=server.grpc_url)
    assert load.report.errors == 0, load.report.error_samples
    assert result["recovered"]["action"] == f"rolled back to version(s) [{old}]"
    assert (result["version"], result["previous_versions"], result["serving_versions"]) == (old + 1, [old], [old + 1])
    assert _state(repository)["files"] == sorted(["config.pbtxt", *map(str, [*before["folders"], old + 1])])
    assert read_config(repository / "dino")["version_policy"] == {"latest": {"num_versions": 1}}
