"""A real Prometheus and Pushgateway: pushed platform metrics, rules and dashboard queries end to end."""

from __future__ import annotations

import json
import math
import time
import uuid

import pytest

from dino_model.monitoring import metrics as m
from dino_model.monitoring.prometheus import dashboard_path
from dino_model.monitoring.promql import get_json, query, wait_for_series
from dino_model.monitoring.pushgateway import current_data_version

pytestmark = pytest.mark.prometheus


def _value(result: list[dict]) -> float:
    assert len(result) == 1, result
    return float(result[0]["value"][1])


def _run() -> str:
    return uuid.uuid4().hex[:8]


def test_pushed_training_metrics_are_queryable(stack) -> None:
    run = _run()
    epoch = {"epoch": 4, "loss": 6.25, "teacher_entropy": 2.5, "images_per_s": 812.5}
    assert m.push_training_metrics(epoch, gateway=stack.gateway, labels={"run": run}, out_dim=65536)

    loss = wait_for_series(stack.prometheus, f'dino_train_loss{{run="{run}"}}')
    assert _value(loss) == 6.25
    assert loss[0]["metric"]["job"] == "dino-train"  # honor_labels keeps the pushed job
    assert _value(query(stack.prometheus, f'dino_train_images_per_second{{run="{run}"}}')) == 812.5
    assert _value(query(stack.prometheus, f'dino_train_epoch{{run="{run}"}}')) == 4
    ratio = wait_for_series(stack.prometheus, f'dino:train_teacher_entropy:ratio{{run="{run}"}}')
    assert _value(ratio) == pytest.approx(2.5 / math.log(65536), rel=1e-12)


def test_nan_loss_and_collapse_raise_alerts(stack) -> None:
    diverged, collapsed = _run(), _run()
    assert m.push_training_metrics({"epoch": 1, "loss": float("nan"), "teacher_entropy": 1.0},
                                   gateway=stack.gateway, labels={"run": diverged}, out_dim=256)
    assert m.push_training_metrics({"epoch": 1, "loss": 5.5, "teacher_entropy": math.log(256) * 0.999},
                                   gateway=stack.gateway, labels={"run": collapsed}, out_dim=256)

    nan = wait_for_series(stack.prometheus, f'dino_train_loss{{run="{diverged}"}}')
    assert math.isnan(_value(nan))
    firing = wait_for_series(stack.prometheus,
                             f'ALERTS{{alertname="DinoTrainingLossNotFinite", run="{diverged}", alertstate="firing"}}')
    assert firing[0]["metric"]["severity"] == "critical"
    # `for: 10m`, so a fresh collapse is pending; the healthy-loss run raises no NaN alert
    wait_for_series(stack.prometheus, f'ALERTS{{alertname="DinoTrainingCollapse", run="{collapsed}"}}')
    assert not query(stack.prometheus, f'ALERTS{{alertname="DinoTrainingLossNotFinite", run="{collapsed}"}}')


def test_eval_metrics_are_queryable(stack) -> None:
    run = _run()
    assert m.push_eval_metrics("knn", {"top1_k20": 0.71}, gateway=stack.gateway, labels={"run": run})
    assert m.push_eval_metrics("linear", {"top1": 0.64}, gateway=stack.gateway, labels={"run": run})
    knn = wait_for_series(stack.prometheus, f'dino_eval_metric{{run="{run}", evaluation="knn"}}')
    assert _value(knn) == 0.71 and knn[0]["metric"]["metric"] == "top1_k20"
    # separate groups: the linear push did not replace the k-NN one
    assert _value(wait_for_series(stack.prometheus, f'dino_eval_metric{{run="{run}", evaluation="linear"}}')) == 0.64


def test_new_data_without_deployment_alerts_until_a_deployment(stack) -> None:
    now = time.time()
    assert m.record_deployment("dino_vit", 3, data_version="old.dir", gateway=stack.gateway, timestamp=now - 3 * 86400)
    assert m.record_data_version("new.dir", gateway=stack.gateway, registered_at=now - 2 * 86400)
    alert = 'ALERTS{alertname="DinoNoDeploymentAfterNewData", alertstate="firing"}'
    wait_for_series(stack.prometheus, alert)

    assert m.record_deployment("dino_vit", 4, data_version="new.dir", gateway=stack.gateway)
    info = wait_for_series(stack.prometheus, 'dino_model_info{model="dino_vit", version="4"}')
    assert info[0]["metric"]["data_version"] == "new.dir"
    assert _value(query(stack.prometheus, 'dino_deployed_model_version{model="dino_vit"}')) == 4
    deadline = time.monotonic() + 30
    while query(stack.prometheus, alert) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not query(stack.prometheus, alert)


def test_registering_the_same_data_version_keeps_its_time(stack) -> None:
    assert m.record_data_version("first.dir", gateway=stack.gateway, registered_at=1000.0)
    assert m.record_data_version("first.dir", gateway=stack.gateway)  # a scheduled re-check
    assert current_data_version(stack.gateway) == ("first.dir", 1000.0)
    assert m.record_data_version("second.dir", gateway=stack.gateway)
    md5, registered = current_data_version(stack.gateway)
    assert md5 == "second.dir" and abs(registered - time.time()) < 60


def test_rules_load_and_dashboard_queries_are_valid(stack) -> None:
    groups = get_json(stack.prometheus, "/api/v1/rules")["groups"]
    assert {g["name"] for g in groups} == {"dino-triton.recording", "dino-triton.alerts",
                                          "dino-platform.recording", "dino-platform.alerts"}
    wait_for_series(stack.prometheus, "up")  # at least one evaluation has happened
    bad = [(r["name"], r.get("lastError")) for g in get_json(stack.prometheus, "/api/v1/rules")["groups"]
           for r in g["rules"] if r["health"] == "err"]
    assert not bad
    dashboard = json.loads(dashboard_path().read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs.append(dashboard["annotations"]["list"][0]["expr"])
    assert len(exprs) > 20
    for expr in exprs:
        query(stack.prometheus, expr.replace("$model", ".*").replace("$run", ".*"))  # raises on invalid PromQL


def test_a_new_pushgateway_starts_empty_whatever_earlier_ones_held(prometheus_bins, port_factory, tmp_path) -> None:
    """Debian's gateway persists to one machine-wide file by default; ours must not share or reload it."""
    from dino_model.monitoring.prometheus import run_pushgateway
    from dino_model.monitoring.pushgateway import gateway_groups

    with run_pushgateway(port=port_factory(), log_dir=tmp_path / "a") as first:
        assert m.record_data_version("earlier.dir", gateway=first.removeprefix("http://"))
        assert gateway_groups(first)
    with run_pushgateway(port=port_factory(), log_dir=tmp_path / "b") as second:
        assert gateway_groups(second) == []
