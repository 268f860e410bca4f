"""The whole pipeline through kfp.local on a tiny configuration, served by a real local tritonserver.

Runs against a throw-away clone of the repository's data versioning (data.dvc and .dvc/config), so
the checkout itself is untouched. A second run, as the flywheel submits one, starts from the weights the
first one deployed (init_from_serving) and, with an impossible quality gate, deploys nothing.
"""

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from dino_model.runtime.checkpoint import load_checkpoint
from dino_model.runtime.processes import free_ports
from dino_model.serving.client import EmbeddingClient
from dino_model.serving.gate import served_lineage
from dino_model.triton.ensemble import EntryPoints
from pipelines.local import run_local
from pipelines.local_server import stop_local_server

REPO = Path(__file__).resolve().parents[2]
TINY = ["train.epochs=1", "model.out_dim=256", "crops.local_crops_number=2", "train.batch_size=16"]


@pytest.fixture(scope="module")
def data_repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data-repo")
    for name in ("data.dvc", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    (root / ".dvc").mkdir()
    shutil.copy(REPO / ".dvc" / "config", root / ".dvc" / "config")
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t.invalid", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t.invalid", "PATH": "/usr/bin:/bin"}
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "data version"]):
        subprocess.run(["git", *cmd], cwd=root, check=True, env=env)
    return root


@pytest.mark.slow
@pytest.mark.triton
def test_local_pipeline_end_to_end_then_a_failing_gate_deploys_nothing(data_repo, tmp_path):
    grpc, http, metrics = free_ports(3)
    ports = {"grpc_port": grpc, "http_port": http, "metrics_port": metrics}
    out = tmp_path / "local"
    try:
        result = run_local(data_repo, config="tiny", overrides=TINY, min_knn_top1=0.0, linear_epochs=20,
                           output_dir=out, **ports)
        _check_deployed_run(result, data_repo)
        held = run_local(data_repo, config="tiny", overrides=TINY, min_knn_top1=101.0, linear_epochs=5,
                         output_dir=out, init_from_serving=True, **ports)
        assert "model.onnx" not in held["artifacts"]
        _check_started_from_served(held, result)
        versions = [m["version"] for m in held["deployed"] if m["name"] == "dino"]
        assert versions == [m["version"] for m in result["deployed"] if m["name"] == "dino"]  # unchanged
    finally:
        stop_local_server(out / "triton")


def _check_started_from_served(held: dict, result: dict) -> None:
    """The second run's checkpoint records the served version's backbone.safetensors and its sha256."""
    (version,) = [m["version"] for m in result["deployed"] if m["name"] == "dino"]
    weights = Path(result["endpoint"]["repository"]) / "dino" / str(version) / "backbone.safetensors"
    init = load_checkpoint(held["artifacts"]["checkpoint.pth"])["init"]
    assert init["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert init["parts"] == "backbone"  # a backbone-only file: the heads start afresh


def _check_deployed_run(result: dict, data_repo: Path) -> None:
    md5 = result["data_version"]["md5"]
    assert md5 == _recorded_md5(data_repo)
    artifacts = result["artifacts"]
    for name in ("checkpoint.pth", "knn.json", "linear.json", "model.onnx"):
        assert name in artifacts, name
    assert load_checkpoint(artifacts["checkpoint.pth"])["data_version"] == md5
    knn = json.loads(Path(artifacts["knn.json"]).read_text())
    assert knn["evaluation"] == "knn" and 0 <= knn["metrics"]["knn_top1"] <= 100
    parity = json.loads(Path(artifacts["model.onnx"]).with_suffix(".export.json").read_text())
    assert parity["metrics"]["parity_max_abs_diff_fp32"] <= 1e-4
    drift = parity["details"]["drift"]  # the reference comes from the data step's artifact, not the training pod's path
    assert drift["images"] > 0 and Path(drift["source"]).name == "train" and Path(drift["path"]).is_file()
    entry_points = [n for n in EntryPoints("dino").all if n != EntryPoints("dino").unpack]  # cpu flavour
    assert sorted(m["name"] for m in result["deployed"]) == sorted(["dino", *entry_points])
    client = EmbeddingClient(result["endpoint"]["grpc"], "dino")
    assert client.served.contract.lineage["data_version"] == md5
    # the export step signed the record in the artifact's metadata, the deploy step verified it: the bar is set
    assert (served_lineage(result["endpoint"]["grpc"], "dino") or {}).get("data_version") == md5
    images = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    embedding = client.infer(images)["embedding"]
    assert embedding.shape == (2, 64) and np.allclose(np.linalg.norm(embedding, axis=1), 1.0, atol=1e-4)


def _recorded_md5(root: Path) -> str:
    import yaml

    return yaml.safe_load((root / "data.dvc").read_text())["outs"][0]["md5"]
