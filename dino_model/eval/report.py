"""Evaluation outputs: a metrics JSON that pipelines and dashboards read, and a short Markdown report.

Every metrics JSON shares the envelope {"schema_version", "evaluation", "checkpoint", "metrics",
"details"}: `metrics` is a flat {name: number} map (what KFP Metrics artifacts and Prometheus get),
`details` holds the rest. docs/evaluation.md documents each evaluation's keys.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


def build_report(evaluation: str, checkpoint: str | Path, metrics: dict[str, float],
                 details: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "evaluation": evaluation,
        "checkpoint": str(checkpoint),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "details": details,
    }


def write_report(report: dict[str, Any], json_path: str | Path, markdown: str | None = None) -> Path:
    """Write the JSON (and `<stem>.md` beside it when markdown is given); returns the JSON path."""
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    if markdown is not None:
        json_path.with_suffix(".md").write_text(markdown)
    return json_path


def metrics_table(metrics: dict[str, float]) -> str:
    rows = "\n".join(f"| {k} | {v:.4g} |" for k, v in metrics.items())
    return f"| metric | value |\n|---|---|\n{rows}\n"


def publish(result: dict[str, Any], metrics: Any, markdown_path: str | Path, score: str) -> float:
    """Hand an evaluation's result to its pipeline step's outputs: every metric logged to `metrics` (a KFP
    Metrics artifact, anything with `log_metric`), the Markdown report copied to `markdown_path`; returns
    the metric `score`, the step's output."""
    for name, value in result["metrics"].items():
        metrics.log_metric(name, value)
    Path(markdown_path).write_text(Path(result["report_path"]).with_suffix(".md").read_text())
    return float(result["metrics"][score])
