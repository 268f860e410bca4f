"""The Kubernetes manifests carry exactly rules.yml and dashboard.json, and the committed copies are current."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import yaml

from dino_model.monitoring import k8s
from dino_model.monitoring.prometheus import dashboard_path, rules_path

REPO = Path(__file__).resolve().parents[3]
COMMITTED = REPO / "k8s" / "base" / "monitoring"


def _rendered() -> dict[str, dict]:
    return {name: yaml.safe_load(text) for name, text in k8s.rendered_manifests().items()}


def test_prometheus_rule_groups_equal_rules_yml() -> None:
    rule = _rendered()[k8s.RULE_FILE]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == yaml.safe_load(rules_path().read_text())["groups"]
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_release_label_follows_the_argument() -> None:
    text = k8s.rendered_manifests(release="monitoring")[k8s.RULE_FILE]
    assert yaml.safe_load(text)["metadata"]["labels"]["release"] == "monitoring"


def test_dashboard_configmap_holds_dashboard_json() -> None:
    configmap = _rendered()[k8s.DASHBOARD_FILE]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["dino-mlops.json"]) == json.loads(dashboard_path().read_text())
    kubernetes_validate.validate(configmap, "1.30.0", strict=True)  # raises on schema errors


def test_committed_manifests_are_up_to_date() -> None:
    stale = k8s.stale_manifests(COMMITTED)
    assert not stale, f"{stale} differ from rules.yml / dashboard.json: run `dino-mlops monitoring render-k8s`"


def test_stale_manifests_detects_an_edit(tmp_path: Path) -> None:
    paths = k8s.render_k8s(tmp_path)
    assert k8s.stale_manifests(tmp_path) == []
    paths[0].write_text(paths[0].read_text().replace("> 0.05", "> 0.5"))
    assert k8s.stale_manifests(tmp_path) == [paths[0]]
