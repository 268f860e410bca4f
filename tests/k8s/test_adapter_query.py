"""The prometheus-adapter rule behind the HPA computes what it claims, checked by a real promtool.

The adapter substitutes <<.LabelMatchers>> (namespace and the HPA's pods) and <<.GroupBy>> (pod)
into metricsQuery; the test does the same and evaluates the result with `promtool test rules`
over counter series shaped like Triton's: pod a queues every request for 3000 us, pod b is idle.
The HPA's target must sit below the queue-time alert of dino_model/monitoring/rules.yml, so that
replicas are added before anyone is paged.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml
from k8s_render import ADAPTER_VALUES, REPO_ROOT, one

RULES_SOURCE = REPO_ROOT / "dino_model" / "monitoring" / "rules.yml"

pytestmark = pytest.mark.prometheus


def _promtool() -> str:
    exe = shutil.which("promtool")
    if exe is None:
        message = "promtool is absent (Debian package `prometheus`)"
        if os.environ.get("DINO_REQUIRE_PROMETHEUS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return exe


def _query(name: str) -> str:
    rules = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    (rule,) = [r for r in rules if r["name"]["as"] == name]
    matchers = 'namespace="dino-mlops",pod=~"triton-a|triton-b"'
    return rule["metricsQuery"].replace("<<.LabelMatchers>>", matchers).replace("<<.GroupBy>>", "pod")


def _series(metric: str, pod: str, values: str) -> dict[str, str]:
    return {"series": f'{metric}{{namespace="dino-mlops",pod="{pod}",model="dino",version="1"}}', "values": values}


@pytest.mark.parametrize(
    ("metric", "expected"),
    [("triton_avg_queue_time_us", {"triton-a": 3000, "triton-b": 0}),
     ("triton_requests_per_second", {"triton-a": 2 / 15, "triton-b": 0})],
)
def test_adapter_query_on_triton_counters(tmp_path, metric: str, expected: dict[str, float]) -> None:
    exe = _promtool()
    spec = {
        "rule_files": [],
        "evaluation_interval": "15s",
        "tests": [{
            "interval": "15s",
            # every 15 s pod a finishes 2 requests that waited 6000 us in total; pod b serves nothing
            "input_series": [
                _series("nv_inference_queue_duration_us", "triton-a", "0+6000x40"),
                _series("nv_inference_request_success", "triton-a", "0+2x40"),
                _series("nv_inference_queue_duration_us", "triton-b", "0x40"),
                _series("nv_inference_request_success", "triton-b", "0x40"),
            ],
            "promql_expr_test": [{
                "expr": _query(metric),
                "eval_time": "5m",
                "exp_samples": [{"labels": f'{{pod="{pod}"}}', "value": value} for pod, value in expected.items()],
            }],
        }],
    }
    path = tmp_path / "adapter_test.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    done = subprocess.run([exe, "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_would_catch_a_wrong_expectation(tmp_path) -> None:
    """The harness is not vacuous: a wrong expected value fails."""
    exe = _promtool()
    spec = {"rule_files": [], "evaluation_interval": "15s", "tests": [{
        "interval": "15s",
        "input_series": [_series("nv_inference_queue_duration_us", "triton-a", "0+6000x40"),
                         _series("nv_inference_request_success", "triton-a", "0+2x40")],
        "promql_expr_test": [{"expr": _query("triton_avg_queue_time_us"), "eval_time": "5m",
                              "exp_samples": [{"labels": '{pod="triton-a"}', "value": 6000}]}],
    }]}
    path = tmp_path / "wrong.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    assert subprocess.run([exe, "test", "rules", str(path)], capture_output=True, timeout=60).returncode != 0


def _queue_alert_fires(tmp_path, queue_us_per_request: float) -> bool:
    """Whether TritonHighQueueTime's expression selects anything at this mean queue time."""
    exe = _promtool()
    groups = yaml.safe_load(RULES_SOURCE.read_text())["groups"]
    (expr,) = [r["expr"] for g in groups for r in g["rules"] if r.get("alert") == "TritonHighQueueTime"]
    series = [
        {"series": 'nv_inference_queue_duration_us{job="triton",model="dino",version="1"}',
         "values": f"0+{queue_us_per_request * 3:g}x80"},
        {"series": 'nv_inference_request_success{job="triton",model="dino",version="1"}', "values": "0+3x80"},
    ]
    spec = {"rule_files": [str(RULES_SOURCE)], "evaluation_interval": "15s", "tests": [{
        "interval": "15s", "input_series": series,
        "promql_expr_test": [{"expr": f"count({' '.join(expr.split())})", "eval_time": "15m",
                              "exp_samples": [{"labels": "{}", "value": 1}]}],
    }]}
    path = tmp_path / f"alert_{queue_us_per_request:g}.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return subprocess.run([exe, "test", "rules", str(path)], capture_output=True, timeout=60).returncode == 0


def test_hpa_scales_out_before_the_queue_alert(rendered, tmp_path) -> None:
    hpa = one(rendered["prod-gpu"], "HorizontalPodAutoscaler", "triton")
    target_us = float(hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"])
    assert not _queue_alert_fires(tmp_path, target_us), "the alert fires at the autoscaler's own target"
    assert _queue_alert_fires(tmp_path, 10 * target_us), "the alert never fires, even at 10x the target"
