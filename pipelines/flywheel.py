"""The flywheel's trigger: when the retraining check turns captured images into a new data version.

Each retraining check (the CronJob, `dino-mlops retrain check`) makes one decision before it reads
the data version: snapshot the capture store (`dino_model.versioning.captured`) or not. It
snapshots when
- the drift alert (`DinoEmbeddingDrift`, dino_model/monitoring/rules.yml) is firing in Prometheus
  and has been active for at least `drift_for_s` (counted from when it became active, so its own
  `for: 15m` is part of it): the served model no longer matches what it is sent; or
- at least `min_new_images` images were captured since the last snapshot: enough new data either way.
The snapshot commits `data.dvc` (pushed to the data repository when the check works on a clone), and
the same check then finds a new data version and submits the run, as for any new data.

The decision, with what it was based on, is written to `flywheel.json` beside the retraining state
(on its claim), under the check's lock: one decision per check, and the time of the last snapshot,
which is what "new images" counts from. Prometheus unreachable counts as no alert (logged, and said
in the decision); a snapshot that fails fails the check with its one-line error, and the next check
decides again.

Settings are environment entries of the retraining ConfigMap, read into one `FlywheelSettings`:
DINO_CAPTURE_STORE (empty: the flywheel is off), DINO_PROMETHEUS_URL, DINO_FLYWHEEL_ALERT,
DINO_FLYWHEEL_DRIFT_FOR_S, DINO_FLYWHEEL_MIN_NEW_IMAGES, DINO_FLYWHEEL_SIMILARITY.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dino_model.errors import ConfigError, DataError, DinoError
from dino_model.runtime import atomic, git
from dino_model.runtime.git import GitError

logger = logging.getLogger(__name__)

STATE_FILE = "flywheel.json"
DECISIONS_KEPT = 100


@dataclass(frozen=True)
class FlywheelSettings:
    """When a retraining check snapshots captured images."""

    store: str = ""  # the capture store; empty: the flywheel is off
    prometheus_url: str = ""  # where the drift alert is read; empty: only the image count triggers
    alert: str = "DinoEmbeddingDrift"
    drift_for_s: float = 3600.0
    min_new_images: int = 1000
    similarity: float | None = None  # near-duplicate threshold; None: calibrated on the data set

    def __post_init__(self) -> None:
        if self.drift_for_s < 0:
            raise ConfigError(f"DINO_FLYWHEEL_DRIFT_FOR_S must not be negative, not {self.drift_for_s}")
        if self.min_new_images < 1:
            raise ConfigError(f"DINO_FLYWHEEL_MIN_NEW_IMAGES must be at least 1, not {self.min_new_images}")
        if self.similarity is not None and not 0.0 < self.similarity <= 1.0:
            raise ConfigError(f"DINO_FLYWHEEL_SIMILARITY must be in (0, 1], not {self.similarity}")

    @property
    def enabled(self) -> bool:
        return bool(self.store)


def _env_number(env: Mapping[str, str], key: str, kind: type) -> Any:
    raw = env.get(key, "").strip()
    if not raw:
        return None
    try:
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{key}={raw!r} is not {'an integer' if kind is int else 'a number'}") from None


def flywheel_settings_from_env(env: Mapping[str, str] | None = None) -> FlywheelSettings:
    env = os.environ if env is None else env
    values: dict[str, Any] = {"store": env.get("DINO_CAPTURE_STORE", "").strip(),
                              "prometheus_url": env.get("DINO_PROMETHEUS_URL", "").strip(),
                              "alert": env.get("DINO_FLYWHEEL_ALERT", "").strip() or "DinoEmbeddingDrift",
                              "similarity": _env_number(env, "DINO_FLYWHEEL_SIMILARITY", float)}
    for key, name, kind in (("DINO_FLYWHEEL_DRIFT_FOR_S", "drift_for_s", float),
                            ("DINO_FLYWHEEL_MIN_NEW_IMAGES", "min_new_images", int)):
        value = _env_number(env, key, kind)
        if value is not None:
            values[name] = value
    return FlywheelSettings(**values)


@dataclass
class Decision:
    """One check's decision and what it rested on."""

    at: str
    action: str  # "snapshot" | "none"
    reason: str
    alert_active_since: str | None = None
    new_images: int = 0
    snapshot: dict[str, Any] | None = None


@dataclass
class FlywheelState:
    last_snapshot_at: str = ""  # the decision time of the last snapshot (ISO, UTC)
    last_snapshot_version: str = ""
    decisions: list[dict[str, Any]] = field(default_factory=list)


def decide(settings: FlywheelSettings, *, alert_since: datetime | None, new_images: int, now: datetime,
           prometheus_note: str = "") -> Decision:
    """Snapshot when the alert has been active long enough, or when enough new images wait."""
    since = alert_since.isoformat() if alert_since else None
    base = {"at": now.isoformat(), "alert_active_since": since, "new_images": new_images}
    if new_images == 0:
        return Decision(action="none", reason="no new captured images", **base)
    if alert_since is not None and (now - alert_since).total_seconds() >= settings.drift_for_s:
        return Decision(action="snapshot", reason=f"{settings.alert} active since {since}, at least "
                        f"{settings.drift_for_s:.0f} s", **base)
    if new_images >= settings.min_new_images:
        return Decision(action="snapshot", reason=f"{new_images} new captured images (at least "
                        f"{settings.min_new_images})", **base)
    alert = (f"{settings.alert} active since {since}, under {settings.drift_for_s:.0f} s" if since
             else f"{settings.alert} not firing{prometheus_note}")
    return Decision(action="none", reason=f"{alert}; {new_images} new images, under {settings.min_new_images}",
                    **base)


def alert_active_since(prometheus_url: str, alert: str) -> datetime | None:
    """When the firing alert `alert` became active (the earliest, over its series); None when not firing."""
    from dino_model.monitoring.promql import get_json

    firing = [a for a in get_json(prometheus_url, "/api/v1/alerts").get("alerts", [])
              if a.get("labels", {}).get("alertname") == alert and a.get("state") == "firing"]
    if not firing:
        return None
    return min(datetime.fromisoformat(a["activeAt"].replace("Z", "+00:00")) for a in firing)


def read_flywheel_state(path: Path) -> FlywheelState:
    try:
        return FlywheelState(**json.loads(path.read_text()))
    except FileNotFoundError:
        return FlywheelState()
    except (ValueError, TypeError) as exc:
        raise DataError(f"flywheel state {path} is corrupt ({exc}); move it away to start afresh") from exc


def write_flywheel_state(path: Path, state: FlywheelState) -> None:
    atomic.write_json(path, asdict(state), mode=0o644)


def new_image_count(store: Any, since: str) -> int:
    """Captured images whose capture time is after `since` (all of them when it is empty)."""
    return sum(1 for record in store.iter_records() if not since or record.time > since)


def _alert(settings: FlywheelSettings) -> tuple[datetime | None, str]:
    if not settings.prometheus_url:
        return None, " (no Prometheus configured)"
    try:
        return alert_active_since(settings.prometheus_url, settings.alert), ""
    except (OSError, ValueError, KeyError, DinoError) as exc:
        logger.warning("flywheel: cannot read alerts from Prometheus at %s (%s): counted as not firing",
                       settings.prometheus_url, exc)
        return None, f" (Prometheus at {settings.prometheus_url} unreachable)"


Snapshotter = Callable[[], dict[str, Any]]  # makes and commits the version; returns its report


def flywheel_check(settings: FlywheelSettings, *, state_dir: str | Path, snapshot: Snapshotter,
                   now: datetime | None = None) -> Decision:
    """Decide, snapshot when decided, record the decision in `state_dir`/flywheel.json."""
    from dino_model.capture import CaptureStore
    from pipelines.retrain import exclusive

    now = now or datetime.now(UTC)
    path = Path(state_dir) / STATE_FILE
    with exclusive(path):
        state = read_flywheel_state(path)
        alert_since, note = _alert(settings)
        count = new_image_count(CaptureStore(settings.store), state.last_snapshot_at)
        decision = decide(settings, alert_since=alert_since, new_images=count, now=now, prometheus_note=note)
        logger.info("flywheel: %s (%s)", decision.action, decision.reason)
        if decision.action == "snapshot":
            report = snapshot()
            decision.snapshot = {k: report.get(k) for k in ("considered", "added", "dropped", "dropped_by_reason",
                                                             "version")}
            state.last_snapshot_at = now.isoformat()
            state.last_snapshot_version = (report.get("version") or {}).get("md5", state.last_snapshot_version)
        state.decisions = [*state.decisions, asdict(decision)][-DECISIONS_KEPT:]
        write_flywheel_state(path, state)
    return decision


def push_data_commit(root: Path, rev: str, *, timeout_s: float) -> None:
    """Push the snapshot's commit of a clone to the data repository's branch `rev`."""
    branch = rev.removeprefix("refs/remotes/origin/")
    try:
        git.run(["push", "--quiet", "origin", f"HEAD:refs/heads/{branch}"], cwd=root, timeout_s=timeout_s)
    except GitError as exc:
        raise DataError(f"cannot push the captured-data commit to branch {branch}: {exc.detail or exc}") from None


def embedder_for(triton_url: str, env: Mapping[str, str] | None = None) -> Any:
    """Near duplicates by DINO_FLYWHEEL_CHECKPOINT's descriptor when set, else by the served model's embeddings."""
    from dino_model.versioning.captured import checkpoint_embedder, served_embedder

    env = os.environ if env is None else env
    checkpoint = env.get("DINO_FLYWHEEL_CHECKPOINT", "").strip()
    if checkpoint:
        return checkpoint_embedder(checkpoint)
    if not triton_url:
        raise ConfigError("the flywheel needs embeddings for near duplicates: set DINO_TRITON_URL (the served "
                          "model) or DINO_FLYWHEEL_CHECKPOINT")
    return served_embedder(triton_url)


def flywheel_step(repo: Path, *, settings: FlywheelSettings, state_path: str | Path, triton_url: str,
                  rev: str | None, git_timeout_s: float, now: datetime | None = None) -> Decision:
    """The retraining check's flywheel step on its data repository: `rev` set when `repo` is a clone whose
    commit must be pushed back to that branch, None for a local checkout (committed in place)."""
    from dino_model.capture import CaptureStore
    from dino_model.versioning import checkout_version
    from dino_model.versioning.captured import snapshot_captured

    def snapshot() -> dict[str, Any]:
        if rev is not None:
            branch = rev.removeprefix("refs/remotes/origin/")
            git.run(["checkout", "--quiet", "-B", branch, rev], cwd=repo)
        if not (repo / "data").is_dir():
            checkout_version(repo)  # a clone holds data.dvc only: the images decide what is a duplicate
        report = snapshot_captured(repo, CaptureStore(settings.store), embedder_for(triton_url),
                                   similarity=settings.similarity)
        if rev is not None and report.version is not None:
            push_data_commit(repo, rev, timeout_s=git_timeout_s)
        return report.to_dict()

    return flywheel_check(settings, state_dir=Path(state_path).parent, snapshot=snapshot, now=now)
