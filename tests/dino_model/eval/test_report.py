"""`publish`: what an evaluation step hands to KFP, every metric and the Markdown report, and its score."""

from __future__ import annotations

from pathlib import Path

import pytest

from dino_model.eval.report import build_report, publish, write_report


class Logged:
    """A stand-in for kfp.dsl.Metrics: only `log_metric` is called."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def log_metric(self, name: str, value: float) -> None:
        self.values[name] = value


def _result(tmp_path: Path) -> dict:
    metrics = {"knn_top1": 61.5, "knn_top5": 90.25}
    report = build_report("knn", tmp_path / "checkpoint.pth", metrics, details={})
    path = write_report(report, tmp_path / "knn.json", markdown="# k-NN\n\ntop-1 61.5\n")
    return {"metrics": metrics, "report_path": str(path)}


def test_every_metric_is_logged_and_the_markdown_copied(tmp_path: Path) -> None:
    logged, markdown = Logged(), tmp_path / "out" / "report.md"
    markdown.parent.mkdir()
    assert publish(_result(tmp_path), logged, markdown, "knn_top1") == 61.5
    assert logged.values == {"knn_top1": 61.5, "knn_top5": 90.25}
    assert markdown.read_text() == (tmp_path / "knn.md").read_text() and "top-1 61.5" in markdown.read_text()


def test_a_score_the_result_lacks_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="linear_top1"):
        publish(_result(tmp_path), Logged(), tmp_path / "report.md", "linear_top1")
