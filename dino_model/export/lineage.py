"""Lineage of an exported model: which data, which code, and how well it scored.

Recorded at export time in the ONNX metadata and copied into the Triton config's parameters, so a
served model answers "where did you come from" without access to the training run: the DVC md5 of
the data (stored in every checkpoint), the code revision (`git rev-parse HEAD`, or
DINO_CODE_REVISION in images built without .git), and the metrics of the evaluation reports
(the `metrics` map of the shared metrics-JSON envelope, dino_model/eval/report.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from dino_model.errors import ExportError

logger = logging.getLogger(__name__)

REVISION_ENV = "DINO_CODE_REVISION"


def code_revision() -> str:
    """The git commit of this code, or DINO_CODE_REVISION, or "" when neither is known."""
    if os.environ.get(REVISION_ENV):
        return os.environ[REVISION_ENV]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def read_metrics(paths: Sequence[str | Path]) -> dict[str, float]:
    """The merged `metrics` maps of metrics-JSON reports (later files win on equal names)."""
    merged: dict[str, float] = {}
    for path in map(Path, paths):
        try:
            report = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ExportError(f"cannot read metrics report {path}: {exc}") from exc
        metrics = report.get("metrics") if isinstance(report, dict) else None
        if not isinstance(metrics, dict):
            raise ExportError(f"{path} is not a metrics report: it has no `metrics` map (see docs/evaluation.md)")
        merged |= {str(k): float(v) for k, v in metrics.items()}
    return merged


def default_metric_reports(checkpoint: str | Path) -> list[Path]:
    """Evaluation reports written beside a checkpoint (`<run>/eval/*.json`), if any."""
    folder = Path(checkpoint).parent / "eval"
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def build_lineage(
    *, data_version: str = "", metrics: dict[str, float] | None = None, checkpoint: str | Path = ""
) -> dict[str, str]:
    """String-valued lineage record; metrics as one JSON object."""
    lineage = {
        "data_version": data_version,
        "code_revision": code_revision(),
        "metrics": json.dumps(metrics or {}, sort_keys=True),
        "checkpoint": str(checkpoint),
    }
    if not data_version:
        logger.warning("no data version known for %s: the lineage records none", checkpoint or "model")
    return lineage


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
