"""rules.yml: promtool accepts it, its unit tests pass and cover every alert, and they can fail."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from dino_model.config import MonitorConfig
from dino_model.errors import ServingError
from dino_model.monitoring.prometheus import rules_path, write_prometheus_config
from dino_model.monitoring.promql import promtool

HERE = Path(__file__).resolve().parent
RULE_TESTS = [HERE / "rules_test.yml", HERE / "rules_data_version_test.yml", HERE / "rules_retrain_test.yml",
              HERE / "rules_pipeline_test.yml"]


def _rules() -> dict:
    return yaml.safe_load(rules_path().read_text())


def _alerts() -> dict[str, dict]:
    return {r["alert"]: r for g in _rules()["groups"] for r in g["rules"] if "alert" in r}


def test_promtool_check_rules(promtool_bin: str) -> None:
    out = promtool("check", "rules", rules_path())
    assert f"SUCCESS: {sum(len(g['rules']) for g in _rules()['groups'])} rules found" in out


def test_promtool_check_config_of_generated_config(promtool_bin: str, tmp_path: Path) -> None:
    config = write_prometheus_config(tmp_path, triton_targets=["localhost:8002"], pushgateway="localhost:9091")
    out = promtool("check", "config", config)
    assert "is valid prometheus config file syntax" in out
    assert "SUCCESS: 1 rule files found" in out


def test_promtool_unit_tests_pass(promtool_bin: str) -> None:
    out = promtool("test", "rules", *RULE_TESTS)
    assert out.count("SUCCESS") == len(RULE_TESTS), out


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert set(_alerts()) <= fired, f"alerts never tested firing: {set(_alerts()) - fired}"
    assert set(_alerts()) <= quiet, f"alerts never tested quiet: {set(_alerts()) - quiet}"


def test_unit_tests_fail_when_a_threshold_changes(promtool_bin: str, tmp_path: Path) -> None:
    """The tests bite: raising the error-ratio threshold to 10% (the test's ratio is 1/11) fails them."""
    text = rules_path().read_text()
    rule = "model:nv_inference_error_ratio:rate5m > "
    changed = text.replace(rule + "0.05", rule + "0.10")
    assert changed != text
    (tmp_path / "rules.yml").write_text(changed)
    test = yaml.safe_load(RULE_TESTS[0].read_text())
    test["rule_files"] = [str(tmp_path / "rules.yml")]
    (tmp_path / "rules_test.yml").write_text(yaml.safe_dump(test, sort_keys=False))
    with pytest.raises(ServingError, match="TritonHighErrorRatio"):
        promtool("test", "rules", tmp_path / "rules_test.yml")


def test_collapse_bounds_match_the_trainers_monitor_config() -> None:
    """The alert and the trainer's own `collapsed` flag use the same fractions of log(out_dim)."""
    expr = _alerts()["DinoTrainingCollapse"]["expr"]
    bounds = {op: float(value) for op, value in re.findall(r"ratio ([<>]) ([0-9.]+)", expr)}
    assert bounds == {"<": MonitorConfig().entropy_min_frac, ">": MonitorConfig().entropy_max_frac}


def test_p99_rule_reads_tritons_summary() -> None:
    expr = _alerts()["TritonHighP99Latency"]["expr"]
    assert 'nv_inference_request_summary_us{quantile="0.99"}' in expr


def test_every_alert_has_severity_and_summary() -> None:
    for name, rule in _alerts().items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
