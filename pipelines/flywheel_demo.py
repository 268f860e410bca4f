"""The data flywheel end to end on this machine: drift, capture, a new data version, a retrained model
in service, and the numbers that say whether it helped.

    python -m pipelines.flywheel_demo --work runs/flywheel          (scripts/flywheel.sh)

1. A data repository (git + DVC) holds the digits; a model trained on them is exported and served by a
   real tritonserver (the `cpu` flavour, with its drift monitor); a real Prometheus scrapes it with the
   project's rules, the drift alert's `for` cut from 15 minutes to `alert_for` so the run takes minutes.
2. A shifted stream (the training digits recoloured, as a new scanner might deliver them: green strokes
   on magenta instead of grey on black) is sent as image bytes to the image entry point `dino_images`,
   whose first step captures them into the capture store (switched on for this server by DINO_CAPTURE_*
   in its environment): capture happens on the server, as in a deployment; the tensor input could not
   be captured as an image.
3. The retraining check's flywheel step sees the alert firing and snapshots the capture store into a
   new DVC data version of the data repository (`data/captured/<day>/`, duplicates dropped).
4. Retraining continues from the served model's weights (`train.init_weights`, recorded in the
   checkpoint's lineage) on the digits plus the captured images (`data.extra_roots`); k-NN is scored on
   the fixed held-out set (`data/digits/val`, which captured data never enters) and on held-out shifted
   digits; the gate refuses a model more than `tolerance` points below the served one on the fixed set.
   A control continues from the same weights with the same recipe on the digits alone, so that the
   report separates what the captured images did from what more training did.
5. The new model, exported with its own drift reference, is deployed as version 2 (a real rollout);
   the shifted stream is sent again and the drift gauge is read for each version.

The report (JSON on stdout, and `<work>/flywheel.json`) holds the numbers docs/monitoring.md quotes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

logger = logging.getLogger("pipelines.flywheel_demo")

IDENTITY = {"GIT_AUTHOR_NAME": "dino-mlops flywheel", "GIT_AUTHOR_EMAIL": "flywheel@example.invalid",
            "GIT_COMMITTER_NAME": "dino-mlops flywheel", "GIT_COMMITTER_EMAIL": "flywheel@example.invalid"}


@dataclass(frozen=True)
class DemoSettings:
    """What the run trains and how long it waits."""

    config: str = "digits_vit_tiny"
    overrides: tuple[str, ...] = ("train.epochs=6",)  # version 1 at half the config's schedule
    # 4 epochs from the served weights at a third of the config's learning rate: at the full rate the mixed data
    # pulled both sets down (docs/monitoring.md)
    retrain_overrides: tuple[str, ...] = ("train.epochs=4", "optim.base_lr=0.005")
    stream_images: int = 1024  # shifted images sent to the image entry point (all captured: rate 1)
    alert_for: str = "10s"  # the drift alert's `for` in this run's Prometheus (15m in rules.yml)
    tolerance: float = 5.0  # k-NN top-1 points the fixed set may lose before the gate refuses
    min_knn_top1: float = 0.0
    alert_timeout_s: float = 300.0


@dataclass
class DemoReport:
    served_before: dict[str, float] = field(default_factory=dict)
    served_after: dict[str, float] = field(default_factory=dict)
    control: dict[str, float] = field(default_factory=dict)  # the same retraining without the captured images
    capture: dict[str, int] = field(default_factory=dict)
    capture_versions: list[str] = field(default_factory=list)  # the served versions the server recorded
    snapshot: dict[str, Any] = field(default_factory=dict)
    flywheel_decision: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)
    drift_ratio: dict[str, float | None] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    init_lineage: dict[str, str] = field(default_factory=dict)


def shuffled(paths: list[Path], seed: int = 0) -> list[Path]:
    """A fixed random order: traffic mixes classes (a stream of one class drifts by itself)."""
    return [paths[i] for i in np.random.default_rng(seed).permutation(len(paths))]


# The shift: paper and ink of a new scanner. The grey training digits have equal channels, so training never
# shaped the differences between the patch embedding's channel weights; this map's strokes differ from its
# paper by (-0.8, +0.8, 0) per channel, a direction whose sum is 0, so the served model sees the strokes
# only through those untrained differences (docs/monitoring.md measures it).
PAPER = np.array([0.9, 0.1, 0.5])


def recoloured(path: Path) -> Image.Image:
    """The grey digit at `path` as the new scanner renders it: ink (1 - PAPER) strokes on PAPER."""
    with Image.open(path) as image:
        grey = np.asarray(image.convert("L"), dtype=np.float32)[..., None] / 255.0
    return Image.fromarray(np.round(255.0 * (grey * (1.0 - PAPER) + (1.0 - grey) * PAPER)).astype(np.uint8))


def write_shifted(source: Path, target: Path) -> Path:
    """The labelled folder `source` with every image recoloured, under `target` (same class folders)."""
    for path in sorted(source.rglob("*.png")):
        out = target / path.relative_to(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        recoloured(path).save(out)
    return target


def data_repository(root: Path) -> tuple[Path, str]:
    """A git + DVC repository whose first data version is the digits; (root, md5)."""
    from dino_model.data.materialize import materialize
    from dino_model.versioning import init_repo, snapshot
    from dino_model.versioning.repo import git

    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q", "-b", "main")
    init_repo(root)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "dvc init")
    materialize("digits", root / "data" / "digits")
    return root, snapshot(root, "data: digits").md5


def train(settings: DemoSettings, out: Path, *, data_root: Path, version: str, extra: tuple[str, ...] = ()
          ) -> tuple[Path, dict[str, str]]:
    """(checkpoint, the run's lineage: data version, and init_weights / init_sha256 when it started from one)"""
    from dino_model.config import load_config
    from dino_model.train.loop import fit

    cfg = load_config(settings.config, overrides=[f"data.root={data_root}", f"train.output_dir={out}",
                                                  f"data.version={version}", *settings.overrides, *extra])
    result = fit(cfg)
    return Path(result.checkpoint), dict(result.lineage)


def knn(checkpoint: Path, train_dir: Path, val_dir: Path, output: Path | None = None) -> float:
    from dino_model.eval.knn_run import run_knn_eval

    return float(run_knn_eval(checkpoint, train_dir=train_dir, val_dir=val_dir, output=output)["metrics"]["knn_top1"])


def export(checkpoint: Path, output: Path) -> Path:
    from dino_model.export.export_run import export_checkpoint

    export_checkpoint(checkpoint, output)
    return output


def held_out_folder(target: Path, source: Path, exclude: list[Path]) -> Path:
    """The labelled folder `source` without the images in `exclude` (symbolic links, same class folders):
    a k-NN memory bank that no training run saw."""
    left_out = {p.resolve() for p in exclude}
    for path in sorted(source.rglob("*.png")):
        if path.resolve() not in left_out:
            link = target / path.relative_to(source)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path.resolve())
    return target


def shifted_scores(checkpoint: Path, shifted: Path, held_out_bank: Path, out: Path) -> dict[str, float]:
    """k-NN on the shifted queries (recoloured `val`, held out from every training run) with two memory
    banks: all recoloured `train` (the stream's images included, as the digits' bank holds the images
    trained on), and only its images never streamed."""
    return {"knn_shifted": knn(checkpoint, shifted / "train", shifted / "val", out),
            "knn_shifted_held_out_bank": knn(checkpoint, held_out_bank, shifted / "val")}


def gauge(metrics_url: str, name: str, version: str) -> float | None:
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    labels = rf'\{{(?=[^}}]*model="dino")(?=[^}}]*version="{version}")[^}}]*\}}'
    found = re.search(rf"^{name}{labels} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


def drift_ratio(metrics_url: str, version: str) -> float | None:
    mmd2 = gauge(metrics_url, "dino_embedding_drift_mmd2", version)
    threshold = gauge(metrics_url, "dino_embedding_drift_threshold", version)
    return None if mmd2 is None or not threshold else mmd2 / threshold


def wait_retired(metrics_url: str, version: str, timeout_s: float = 120.0) -> None:
    """Until the retired version gives up the drift gauges (Triton unloads it after the switch)."""
    deadline = time.monotonic() + timeout_s
    while gauge(metrics_url, "dino_embedding_drift_mmd2", version) is not None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"version {version} kept the drift gauges {timeout_s:.0f} s after it was retired")
        time.sleep(0.5)


def send_stream(server: Any, paths: list[Path]) -> None:
    """Send the image files' bytes to the image entry point (`dino_images`), batches of 8, as any
    Triton client can: the server preprocesses them, measures drift, and captures them when on."""
    from dino_model.serving.client import EmbeddingClient

    client = EmbeddingClient(server.grpc_url, "dino")
    for start in range(0, len(paths), 8):
        client.infer_encoded([p.read_bytes() for p in paths[start:start + 8]])


def wait_for_captures(store: Path, expected: int, timeout_s: float = 60.0, settle_s: float = 3.0) -> int:
    """The images the server's capture wrote (its writer thread runs behind the requests): once `expected`
    are there, or the count has not moved for `settle_s`."""
    from dino_model.capture import CaptureStore

    deadline, last, moved = time.monotonic() + timeout_s, -1, time.monotonic()
    while True:
        count = sum(1 for _ in CaptureStore(store).iter_records()) if store.is_dir() else 0
        if count != last:
            last, moved = count, time.monotonic()
        if count >= expected or time.monotonic() - moved >= settle_s or time.monotonic() > deadline:
            return count
        time.sleep(0.25)


@contextmanager
def prometheus(work: Path, server: Any, alert_for: str) -> Iterator[str]:
    """A real Prometheus scraping the server every second, the drift alert's `for` set to `alert_for`."""
    from dino_model.monitoring.prometheus import run_prometheus, write_prometheus_config
    from dino_model.runtime.processes import free_ports

    config = write_prometheus_config(work / "prometheus", triton_targets=[f"127.0.0.1:{server.ports['metrics']}"],
                                     scrape_interval="1s")
    rules = config.parent / "rules.yml"
    text = rules.read_text()
    start = text.index("- alert: DinoEmbeddingDrift\n")
    rules.write_text(text[:start] + text[start:].replace("for: 15m", f"for: {alert_for}", 1))
    with run_prometheus(config, port=free_ports(1)[0], storage_dir=work / "prometheus" / "tsdb") as url:
        yield url


def wait_for_alert(url: str, timeout_s: float) -> datetime:
    from pipelines.flywheel import alert_active_since

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        since = alert_active_since(url, "DinoEmbeddingDrift")
        if since is not None:
            return since
        time.sleep(1.0)
    raise TimeoutError(f"DinoEmbeddingDrift did not fire within {timeout_s:.0f} s")


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """These environment variables set for the block (a server started in it inherits them)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def capture_environment(store: Path, stream_images: int) -> dict[str, str]:
    """Capture switched on for this deployment, as an operator does (docs/operations.md, "Image capture"):
    every image of the stream is sampled (rate 1, so a short run captures enough to learn from) and the
    writer's queue holds the whole stream (a full queue drops images rather than slowing requests)."""
    return {"DINO_CAPTURE_ENABLED": "1", "DINO_CAPTURE_STORE": str(store), "DINO_CAPTURE_RATE": "1",
            "DINO_CAPTURE_QUEUE_SIZE": str(max(256, stream_images))}


def serve_first(work: Path, onnx: Path, capture: dict[str, str]) -> Any:
    from dino_model.runtime.processes import free_ports
    from dino_model.serving.server import TritonServer
    from dino_model.triton.config import RepositoryOptions
    from dino_model.triton.repository import write_model_repository

    repository = work / "models"
    write_model_repository(onnx, repository, RepositoryOptions(flavour="cpu", max_batch_size=16,
                                                               preferred_batch_sizes=[]))
    http, grpc, metrics = free_ports(3)
    with environment(capture):
        return TritonServer(repository, http_port=http, grpc_port=grpc, metrics_port=metrics).start()


def run(work: Path, settings: DemoSettings) -> DemoReport:
    """The whole loop (module docstring); servers it starts are stopped when it returns."""
    from dino_model.capture import CaptureStore
    from dino_model.serving.deploy import deploy
    from dino_model.serving.gate import decide as gate_decide
    from dino_model.versioning.captured import checkpoint_embedder, snapshot_captured
    from pipelines.flywheel import FlywheelSettings, flywheel_check

    for key, value in IDENTITY.items():
        os.environ.setdefault(key, value)
    report, began = DemoReport(), time.monotonic()
    repo, md5 = data_repository(work / "data-repo")
    digits = repo / "data" / "digits"
    shifted = write_shifted(digits / "train", work / "shifted" / "train").parent
    write_shifted(digits / "val", shifted / "val")
    v1, _ = train(settings, work / "runs" / "v1", data_root=digits / "train", version=md5)
    stream = shuffled(sorted((shifted / "train").rglob("*.png")))[: settings.stream_images]
    bank = held_out_folder(work / "shifted" / "train-not-streamed", shifted / "train", stream)
    report.served_before = {"knn_fixed": knn(v1, digits / "train", digits / "val"),
                            **shifted_scores(v1, shifted, bank, work / "eval" / "v1-shifted.json")}
    onnx_v1 = export(v1, work / "export" / "v1" / "model.onnx")
    store = work / "capture-store"
    with ExitStack() as stack:
        server = stack.enter_context(serve_first(work, onnx_v1, capture_environment(store, settings.stream_images)))
        prom = stack.enter_context(prometheus(work, server, settings.alert_for))
        sent = time.monotonic()
        send_stream(server, stream)
        report.capture = {"sent": len(stream), "stored": wait_for_captures(store, len(stream))}
        report.capture_versions = sorted({r.model_version for r in CaptureStore(store).iter_records()})
        report.drift_ratio["v1_on_shifted"] = drift_ratio(server.metrics_url, "1")
        alert_since = wait_for_alert(prom, settings.alert_timeout_s)
        report.seconds["stream_to_alert"] = round(time.monotonic() - sent, 1)
        alerted = time.monotonic()
        decision = flywheel_check(
            FlywheelSettings(store=str(store), prometheus_url=prom, drift_for_s=0),
            state_dir=work / "retrain-state",
            snapshot=lambda: snapshot_captured(repo, CaptureStore(store), checkpoint_embedder(v1)).to_dict())
        report.flywheel_decision = {"action": decision.action, "reason": decision.reason,
                                    "alert_active_since": alert_since.isoformat()}
        if decision.action != "snapshot" or not (decision.snapshot or {}).get("version"):
            raise RuntimeError(f"the flywheel made no new data version: {decision.reason}; {decision.snapshot}")
        report.snapshot = {k: decision.snapshot[k] for k in ("considered", "added", "dropped", "dropped_by_reason")}
        report.snapshot["version"] = decision.snapshot["version"]["md5"]
        retrain = (f"train.init_weights={v1}", *settings.retrain_overrides)
        v2, lineage = train(settings, work / "runs" / "v2", data_root=digits / "train",
                            version=report.snapshot["version"],
                            extra=(f"data.extra_roots=[{repo / 'data' / 'captured'}]", *retrain))
        report.init_lineage = lineage
        report.served_after = {"knn_fixed": knn(v2, digits / "train", digits / "val"),
                               **shifted_scores(v2, shifted, bank, work / "eval" / "v2-shifted.json")}
        gate = gate_decide(report.served_after["knn_fixed"], threshold=settings.min_knn_top1,
                           serving=report.served_before["knn_fixed"], tolerance=settings.tolerance)
        report.gate = gate.to_dict() | {"tolerance": settings.tolerance}
        if gate.decision == "deploy":
            onnx_v2 = export(v2, work / "export" / "v2" / "model.onnx")
            deploy(onnx_v2, server.repository, url=server.grpc_url, flavour="cpu", headers=server.admin_headers)
            report.seconds["alert_to_new_version_serving"] = round(time.monotonic() - alerted, 1)
            # the drift step follows the served version at its next update, so traffic comes first: the first
            # pass moves the window to version 2's reference, the second fills it (the same bytes again:
            # capture keeps none of them twice)
            send_stream(server, stream)
            wait_retired(server.metrics_url, "1")
            send_stream(server, stream)
            report.drift_ratio["v2_on_shifted"] = drift_ratio(server.metrics_url, "2")
    # after the servers stop, so that it does not delay version 2
    control, _ = train(settings, work / "runs" / "control", data_root=digits / "train", version=md5,
                       extra=(f"train.init_weights={v1}", *settings.retrain_overrides))
    report.control = {"knn_fixed": knn(control, digits / "train", digits / "val"),
                      **shifted_scores(control, shifted, bank, work / "eval" / "control-shifted.json")}
    report.seconds["total"] = round(time.monotonic() - began, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    from dino_model.logs import setup_logging

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default="runs/flywheel", help="folder for everything the run makes (emptied)")
    parser.add_argument("--config", default=DemoSettings.config, help="training config of both models")
    parser.add_argument("--override", action="append", default=None,
                        help=f"config override of every training (default: {' '.join(DemoSettings.overrides)})")
    parser.add_argument("--retrain-override", action="append", default=None,
                        help=f"overrides of the retraining (default: {' '.join(DemoSettings.retrain_overrides)})")
    parser.add_argument("--stream-images", type=int, default=DemoSettings.stream_images)
    parser.add_argument("--alert-for", default=DemoSettings.alert_for)
    parser.add_argument("--tolerance", type=float, default=DemoSettings.tolerance)
    args = parser.parse_args(argv)
    setup_logging()
    work = Path(args.work).resolve()
    if work.exists() and any(work.iterdir()):
        raise SystemExit(f"{work} is not empty: give an empty or new --work folder")
    settings = DemoSettings(config=args.config, overrides=tuple(args.override or DemoSettings.overrides),
                            retrain_overrides=tuple(args.retrain_override or DemoSettings.retrain_overrides),
                            stream_images=args.stream_images, alert_for=args.alert_for, tolerance=args.tolerance)
    report = run(work, settings)
    text = json.dumps(asdict(report), indent=2)
    (work / "flywheel.json").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
