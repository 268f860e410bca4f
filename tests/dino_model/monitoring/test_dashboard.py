"""dashboard.json: a well-formed Grafana dashboard that only queries metrics the platform defines.

That its PromQL parses is checked against a real Prometheus in test_prometheus.py.
"""

from __future__ import annotations

import json
import re

import yaml

from dino_model.monitoring import metrics as m
from dino_model.monitoring.prometheus import dashboard_path, rules_path

TRITON_METRICS = {
    "nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
    "nv_inference_exec_count", "nv_inference_pending_request_count", "nv_inference_request_summary_us",
    "nv_gpu_utilization",
}


def _dashboard() -> dict:
    return json.loads(dashboard_path().read_text())


def _exprs() -> list[str]:
    return [t["expr"] for p in _dashboard()["panels"] for t in p.get("targets", [])]


def _platform_names() -> set[str]:
    specs = [*m.TRAIN_METRICS.values(), m.LOSS_FINITE, m.ENTROPY_MAX, m.EVAL_METRIC, m.EVAL_TIMESTAMP,
             m.DEPLOYED_VERSION, m.DEPLOYMENT_TIMESTAMP, m.MODEL_INFO, m.DATA_INFO, m.DATA_TIMESTAMP]
    return {name for name, _ in specs}


def _recorded() -> set[str]:
    rules = yaml.safe_load(rules_path().read_text())
    return {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}


def test_panels_are_well_formed() -> None:
    panels = _dashboard()["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for p in panels:
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
        for target in p.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", p["title"]


def test_every_queried_metric_is_defined() -> None:
    known = _platform_names() | _recorded() | TRITON_METRICS | {"up", "ALERTS"}
    names = {tok for expr in _exprs() for tok in re.findall(r"\b((?:nv_|dino_|dino:|model:)[a-z0-9_:]+)", expr)}
    assert names, "no metric found in the dashboard"
    assert names <= known, f"unknown metrics: {names - known}"


def test_dashboard_shows_the_series_the_alerts_use() -> None:
    text = " ".join(_exprs())
    for name in ("model:nv_inference_error_ratio:rate5m", "model:nv_inference_request_duration_us:mean5m",
                 "model:nv_inference_queue_duration_us:mean5m", "nv_inference_request_summary_us",
                 "dino:train_teacher_entropy:ratio", "dino_train_loss_finite",
                 "dino_deployment_timestamp_seconds", "dino_data_version_timestamp_seconds", 'up{job=~".*triton.*"}'):
        assert name in text, name
    for name in ("dino_train_loss", "dino_train_images_per_second", "dino_train_epoch", "dino_eval_metric",
                 "dino_deployed_model_version", "dino_data_version_info", "dino_model_info"):
        assert name in text, name


def test_training_and_evaluation_panels_select_the_pipeline_run() -> None:
    """Each pipeline run pushes under run=<KFP run id>: the panels filter by a `run` variable built from it."""
    variables = {v["name"]: v for v in _dashboard()["templating"]["list"]}
    assert "label_values(dino_train_epoch, run)" in variables["run"]["definition"]
    per_run = [e for e in _exprs() if e.startswith(("dino_train_", "dino:train_", "dino_eval_metric"))]
    assert len(per_run) >= 6
    assert all('run=~"$run"' in e for e in per_run), per_run
