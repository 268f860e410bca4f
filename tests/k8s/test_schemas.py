"""Every rendered resource validates against Kubernetes' OpenAPI schemas or the CRDs' schemas."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from k8s_render import INSTALLS, TARGETS, find, name_of, one
from k8s_schema import k8s_versions, schema_errors

RULES_SOURCE = Path(__file__).resolve().parents[2] / "dino_model" / "monitoring" / "rules.yml"


@pytest.mark.parametrize("version", k8s_versions())
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_resource_validates(rendered, target: str, version: str) -> None:
    failures = {name_of(r): errs for r in rendered[target] if (errs := schema_errors(r, version=version))}
    assert not failures, failures


def test_crd_kinds_are_covered(rendered) -> None:
    kinds = {r["kind"] for target in TARGETS for r in rendered[target]}
    assert {"ServiceMonitor", "PrometheusRule", "PyTorchJob"} <= kinds


def _triton(rendered):
    return copy.deepcopy(one(rendered["prod-gpu"], "Deployment", "triton"))


def test_strict_validation_rejects_a_misspelt_field(rendered) -> None:
    bad = _triton(rendered)
    container = bad["spec"]["template"]["spec"]["containers"][0]
    container["resource"] = container.pop("resources")
    errors = schema_errors(bad, version=k8s_versions()[-1])
    assert errors and "resource" in errors[0]


def test_validation_rejects_a_wrong_type(rendered) -> None:
    bad = _triton(rendered)
    bad["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8000"
    assert schema_errors(bad, version=k8s_versions()[0])


def test_unknown_kind_is_an_error_not_a_pass() -> None:
    errors = schema_errors({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}},
                           version=k8s_versions()[-1])
    assert errors and errors[0].startswith("no schema")


@pytest.mark.parametrize(
    ("path", "value", "expect"),
    [
        (("spec", "endpoints", 0, "interval"), "15 seconds", "does not match"),
        (("spec", "endpoints", 0, "scheme"), "tcp", "is not one of"),
        (("spec", "endpoint"), [], "Additional properties"),
    ],
)
def test_servicemonitor_schema_rejects(rendered, path, value, expect) -> None:
    bad = copy.deepcopy(one(rendered["prod-gpu"], "ServiceMonitor", "triton"))
    _set(bad, path, value)
    errors = schema_errors(bad, version=k8s_versions()[-1])
    assert errors and expect in errors[0]


def test_prometheusrule_schema_rejects_bad_rules(rendered) -> None:
    rule = one(rendered["prod-gpu"], "PrometheusRule", "dino-mlops-rules")
    no_expr = copy.deepcopy(rule)
    del no_expr["spec"]["groups"][0]["rules"][0]["expr"]
    both = copy.deepcopy(rule)
    both["spec"]["groups"][0]["rules"][0]["alert"] = "Both"
    bad_for = copy.deepcopy(rule)
    bad_for["spec"]["groups"][1]["rules"][0]["for"] = "one minute"
    for bad in (no_expr, both, bad_for):
        assert schema_errors(bad, version=k8s_versions()[-1])


def test_pytorchjob_schema_rejects(rendered) -> None:
    job = one(rendered["prod-gpu/pretrain"], "PyTorchJob", "dino-pretrain")
    launcher = copy.deepcopy(job)
    launcher["spec"]["pytorchReplicaSpecs"]["Launcher"] = launcher["spec"]["pytorchReplicaSpecs"]["Worker"]
    bad_policy = copy.deepcopy(job)
    bad_policy["spec"]["pytorchReplicaSpecs"]["Worker"]["restartPolicy"] = "Sometimes"
    bad_template = copy.deepcopy(job)
    bad_template["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["volumeMount"] = []
    for bad, expect in ((launcher, "Launcher"), (bad_policy, "Sometimes"), (bad_template, "volumeMount")):
        errors = schema_errors(bad, version=k8s_versions()[-1])
        assert errors and expect in errors[0], errors


@pytest.mark.parametrize("env", sorted(INSTALLS))
def test_prometheusrule_carries_the_single_rule_source(rendered, env: str) -> None:
    """The cluster gets the same groups as the local Prometheus (dino_model/monitoring/rules.yml)."""
    (rule,) = find(rendered[env], "PrometheusRule")
    groups = rule["spec"]["groups"]
    assert len({g["name"] for g in groups}) == len(groups), "group names must be unique (CRD list-map key)"
    assert groups == yaml.safe_load(RULES_SOURCE.read_text())["groups"]


def _set(obj, path, value) -> None:
    for key in path[:-1]:
        obj = obj[key]
    obj[path[-1]] = value
