"""The flywheel end to end (pipelines/flywheel_demo.py, scripts/flywheel.sh) with test-sized training: a real
tritonserver, a real Prometheus, a real git + DVC data repository, a real rollout to version 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipelines.flywheel_demo import main

pytestmark = [pytest.mark.slow, pytest.mark.triton, pytest.mark.prometheus]


def test_drift_to_a_retrained_model_in_service(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fixtures.triton import require_triton

    require_triton()
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus is not installed (apt-get install -y prometheus)")
    work = tmp_path / "flywheel"
    assert main(["--work", str(work), "--config", "tiny", "--stream-images", "128", "--alert-for", "2s",
                 "--retrain-override", "train.epochs=1", "--tolerance", "10"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads((work / "flywheel.json").read_text())

    # captured, alerted, snapshotted into a committed data version
    assert report["capture"]["stored"] > 0
    assert report["flywheel_decision"]["action"] == "snapshot"
    assert "DinoEmbeddingDrift active since" in report["flywheel_decision"]["reason"]
    assert report["snapshot"]["added"] + report["snapshot"]["dropped"] == report["snapshot"]["considered"]
    assert report["snapshot"]["added"] > 0
    # retrained from the served weights, the gate applied on the fixed set, version 2 in service
    assert report["init_lineage"]["init_weights"].endswith("runs/v1/checkpoint.pth")
    assert len(report["init_lineage"]["init_sha256"]) == 64
    before, after = report["served_before"], report["served_after"]
    assert report["gate"]["decision"] == ("deploy" if after["knn_fixed"] >= before["knn_fixed"] - 10 else "hold")
    if report["gate"]["decision"] == "deploy":
        assert report["drift_ratio"]["v2_on_shifted"] is not None
        assert report["seconds"]["alert_to_new_version_serving"] > 0
