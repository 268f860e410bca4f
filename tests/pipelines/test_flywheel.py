"""The flywheel's trigger: one decision per retraining check, from the drift alert in a real Prometheus or
the number of new captured images; a snapshot committed (and pushed) before the check reads the version."""

from __future__ import annotations

import io
import json
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dino_model.capture import CaptureSettings, Sampler
from dino_model.cli.main import main
from dino_model.errors import ConfigError
from dino_model.runtime.processes import free_ports
from dino_model.versioning import snapshot
from dino_model.versioning.repo import git
from dino_model.versioning.versions import version_at
from pipelines import flywheel
from pipelines.flywheel import (
    FlywheelSettings,
    alert_active_since,
    decide,
    flywheel_check,
    flywheel_settings_from_env,
    flywheel_step,
    read_flywheel_state,
)

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def pixels(images) -> np.ndarray:
    rows = [np.asarray(im.convert("L").resize((8, 8)), dtype=np.float32).ravel() for im in images]
    out = np.stack(rows)
    return out - out.mean(axis=1, keepdims=True)


def capture(store: Path, count: int, *, seed: int = 1000, when: datetime = NOW) -> None:
    rng = np.random.default_rng(seed)
    with Sampler(CaptureSettings(enabled=True, store=str(store), rate=1.0)) as sampler:
        for i in range(count):
            out = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(out, "PNG")
            sampler.offer(out.getvalue(), model_version="1", drift_score=2.0, now=when + timedelta(seconds=i))


@pytest.mark.parametrize(("alert_age_s", "images", "action", "reason"), [
    (None, 0, "none", "no new captured images"),
    (7200, 0, "none", "no new captured images"),
    (7200, 3, "snapshot", "DinoEmbeddingDrift active since"),
    (600, 3, "none", "under 3600 s; 3 new images, under 1000"),
    (None, 3, "none", "DinoEmbeddingDrift not firing; 3 new images"),
    (None, 1000, "snapshot", "1000 new captured images (at least 1000)"),
])
def test_one_decision_from_the_alert_and_the_count(alert_age_s, images, action, reason) -> None:
    since = None if alert_age_s is None else NOW - timedelta(seconds=alert_age_s)
    decision = decide(FlywheelSettings(store="s"), alert_since=since, new_images=images, now=NOW)
    assert decision.action == action and reason in decision.reason


def test_settings_from_the_environment() -> None:
    assert flywheel_settings_from_env({}).enabled is False
    settings = flywheel_settings_from_env({"DINO_CAPTURE_STORE": "s3://b/c", "DINO_FLYWHEEL_MIN_NEW_IMAGES": "50",
                                           "DINO_FLYWHEEL_DRIFT_FOR_S": "0"})
    assert (settings.min_new_images, settings.drift_for_s, settings.similarity) == (50, 0.0, None)
    with pytest.raises(ConfigError, match="DINO_FLYWHEEL_MIN_NEW_IMAGES='many' is not an integer"):
        flywheel_settings_from_env({"DINO_FLYWHEEL_MIN_NEW_IMAGES": "many"})


@pytest.fixture
def drifting_prometheus(tmp_path: Path):
    """A real Prometheus and Pushgateway with the project's rules (the alert's `for` cut to 1 s), and a
    drift ratio of 3 pushed for model dino version 1."""
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

    from dino_model.monitoring.prometheus import find_binary, run_prometheus, run_pushgateway, write_prometheus_config

    for name in ("prometheus", "prometheus-pushgateway"):
        if shutil.which(name) is None:
            pytest.skip(f"{name} is not installed (apt-get install -y prometheus prometheus-pushgateway)")
    find_binary("prometheus")
    gateway_port, port = free_ports(2)
    config = write_prometheus_config(tmp_path / "prom", triton_targets=["127.0.0.1:1"],
                                     pushgateway=f"127.0.0.1:{gateway_port}", scrape_interval="1s")
    rules = config.parent / "rules.yml"
    text = rules.read_text()
    start = text.index("- alert: DinoEmbeddingDrift\n")
    rules.write_text(text[:start] + text[start:].replace("for: 15m", "for: 1s", 1))
    with run_pushgateway(port=gateway_port, log_dir=tmp_path), \
            run_prometheus(config, port=port, storage_dir=tmp_path / "tsdb") as url:
        registry = CollectorRegistry()
        labels = {"model": "dino", "version": "1"}
        Gauge("dino_embedding_drift_mmd2", "", list(labels), registry=registry).labels(**labels).set(0.3)
        Gauge("dino_embedding_drift_threshold", "", list(labels), registry=registry).labels(**labels).set(0.1)
        push_to_gateway(f"127.0.0.1:{gateway_port}", job="triton-drift", registry=registry)
        yield url


def _wait_firing(url: str, timeout_s: float = 60.0) -> datetime:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        since = alert_active_since(url, "DinoEmbeddingDrift")
        if since is not None:
            return since
        time.sleep(0.5)
    raise AssertionError("DinoEmbeddingDrift did not fire")


def test_a_firing_drift_alert_in_prometheus_snapshots_once(drifting_prometheus: str, repo: Path,
                                                          tmp_path: Path, monkeypatch) -> None:
    snapshot(repo, "the set")
    store, state = tmp_path / "store", tmp_path / "retrain" / "state.json"
    capture(store, 3)
    settings = FlywheelSettings(store=str(store), prometheus_url=drifting_prometheus, drift_for_s=0,
                                similarity=0.95)
    monkeypatch.setattr(flywheel, "embedder_for", lambda url: pixels)
    since = _wait_firing(drifting_prometheus)
    assert abs((datetime.now(UTC) - since).total_seconds()) < 120

    first = flywheel_step(repo, settings=settings, state_path=state, triton_url="", rev=None, git_timeout_s=60)
    assert first.action == "snapshot" and "DinoEmbeddingDrift active since" in first.reason
    assert first.snapshot["added"] == 3 and git(repo, "log", "-1", "--format=%s").startswith("data: 3 captured")
    second = flywheel_step(repo, settings=settings, state_path=state, triton_url="", rev=None, git_timeout_s=60)
    assert second.action == "none" and second.reason == "no new captured images"
    recorded = read_flywheel_state(state.parent / "flywheel.json")
    assert [d["action"] for d in recorded.decisions] == ["snapshot", "none"]
    assert recorded.last_snapshot_version == first.snapshot["version"]["md5"] == version_at(repo, "HEAD").md5


def test_unreachable_prometheus_counts_as_no_alert(tmp_path: Path, free_port: int) -> None:
    capture(tmp_path / "store", 2)
    settings = FlywheelSettings(store=str(tmp_path / "store"), prometheus_url=f"http://127.0.0.1:{free_port}")
    decision = flywheel_check(settings, state_dir=tmp_path, snapshot=lambda: pytest.fail("no snapshot"), now=NOW)
    assert decision.action == "none" and "unreachable" in decision.reason and decision.new_images == 2


def test_new_images_count_from_the_last_snapshot(tmp_path: Path) -> None:
    store = tmp_path / "store"
    capture(store, 3, when=NOW - timedelta(hours=1))
    settings = FlywheelSettings(store=str(store), min_new_images=3)
    made = []
    assert flywheel_check(settings, state_dir=tmp_path, snapshot=lambda: made.append(1) or {}, now=NOW).action \
        == "snapshot"
    capture(store, 2, seed=1001, when=NOW + timedelta(minutes=5))
    later = flywheel_check(settings, state_dir=tmp_path, snapshot=lambda: pytest.fail("only 2 new"),
                           now=NOW + timedelta(minutes=10))
    assert later.action == "none" and later.new_images == 2 and made == [1]


def test_the_retraining_check_snapshots_a_clone_pushes_it_and_submits_the_new_version(
        repo: Path, tmp_path: Path, kfp_api, monkeypatch, capsys) -> None:
    """`dino-mlops retrain check` on a git URL: the flywheel commits in the clone, pushes to the branch, and
    the same check submits a run for the version it made."""
    from dino_model.versioning import add_remote

    add_remote(repo, "shared", str(tmp_path / "dvc-remote"), default=True)  # a remote every clone reaches
    config = repo / ".dvc" / "config"
    lines = [f"    url = {tmp_path / 'dvc-remote'}" if line.strip().startswith("url") and "dvc-remote" in line
             and ".dvc-remote" not in line else line for line in config.read_text().splitlines()]
    config.write_text("\n".join(lines) + "\n")
    git(repo, "add", ".dvc/config")
    git(repo, "commit", "-qm", "the shared remote")
    snapshot(repo, "the set")
    origin = tmp_path / "origin.git"
    git(tmp_path, "clone", "-q", "--bare", str(repo), str(origin))
    store = tmp_path / "store"
    capture(store, 4)
    for key, value in {"DINO_CAPTURE_STORE": str(store), "DINO_FLYWHEEL_MIN_NEW_IMAGES": "4",
                       "DINO_FLYWHEEL_SIMILARITY": "0.95", "KFP_NAMESPACE": "team-a",
                       "DINO_PARAM_gpus": "0"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(flywheel, "embedder_for", lambda url: pixels)
    code = main(["retrain", "check", "--repo", f"file://{origin}", "--rev", "main", "--host", kfp_api.url,
                 "--state", str(tmp_path / "state" / "state.json"), "--workdir", str(tmp_path / "work")])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out)
    assert result["flywheel"]["action"] == "snapshot" and result["flywheel"]["snapshot"]["added"] == 4
    pushed = version_at(origin, "main")
    assert result["action"] == "submitted" and result["data_version"] == pushed.md5
    assert pushed.md5 == result["flywheel"]["snapshot"]["version"]["md5"]
    assert git(origin, "log", "-1", "--format=%s", "main").startswith("data: 4 captured images")
    (run,) = kfp_api.runs  # the flywheel's version continues from the served weights, gated with a tolerance
    params = run["runtime_config"]["parameters"]
    assert params["init_from_serving"] is True and params["gate_tolerance"] == 1.0
    assert params["overrides"] == ["train.epochs=10", "optim.warmup_epochs=1", "optim.base_lr=0.00017",
                                   "loss.warmup_teacher_temp_epochs=0"]
    assert params["data_version"] == pushed.md5 and params["gpus"] == 0
