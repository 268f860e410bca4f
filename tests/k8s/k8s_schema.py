"""Schema validation of rendered resources, without a cluster.

Built-in kinds are checked by kubernetes-validate against Kubernetes' own OpenAPI schemas in strict
mode (unknown fields are errors, as with `kubectl apply --validate=strict`). ServiceMonitor,
PrometheusRule and PyTorchJob are checked against the reduced CRD schemas in schemas/ (provenance
in schemas/README.md); the pod templates a PyTorchJob embeds are checked as Kubernetes
PodTemplateSpecs, which is what the real CRD embeds.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

SCHEMA_DIR = Path(__file__).parent / "schemas"
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.yaml",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule.yaml",
    ("kubeflow.org/v1", "PyTorchJob"): "pytorchjob.yaml",
}
# the oldest Kubernetes release the manifests target (autoscaling/v2, CronJob timeZone GA in 1.27,
# PodDisruptionBudget unhealthyPodEvictionPolicy GA in 1.31) and the newest one bundled
MIN_K8S_VERSION = "1.31.0"


def k8s_versions() -> tuple[str, ...]:
    return (MIN_K8S_VERSION, kubernetes_validate.latest_version())


@cache
def crd_validator(file_name: str) -> jsonschema.protocols.Validator:
    schema = yaml.safe_load((SCHEMA_DIR / file_name).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def schema_errors(resource: dict[str, Any], *, version: str) -> list[str]:
    """Every schema error found for one resource (empty when it validates)."""
    key = (resource.get("apiVersion"), resource.get("kind"))
    if key in CRD_SCHEMAS:
        validator = crd_validator(CRD_SCHEMAS[key])
        errors = [f"{_path(e.absolute_path)}: {e.message}" for e in validator.iter_errors(resource)]
        if key[1] == "PyTorchJob" and not errors:
            for role, replica in resource["spec"]["pytorchReplicaSpecs"].items():
                template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": role.lower()},
                            "template": replica["template"]}
                errors += [f"spec.pytorchReplicaSpecs.{role}.{e}" for e in _builtin_errors(template, version)]
        return errors
    return _builtin_errors(resource, version)


def _builtin_errors(resource: dict[str, Any], version: str) -> list[str]:
    try:
        kubernetes_validate.validate(resource, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{_path(exc.path)}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [f"no schema: {exc.message}"]
    return []


def _path(parts: Any) -> str:
    return ".".join(str(p) for p in parts) or "<root>"
