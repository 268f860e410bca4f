"""Schema validation of rendered resources, without a cluster.

Built-in kinds are checked by kubernetes-validate against Kubernetes' own OpenAPI schemas in strict
mode (unknown fields are errors, as with `kubectl apply --validate=strict`). ServiceMonitor,
PrometheusRule and PyTorchJob are checked against the reduced CRD schemas in schemas/ (provenance
in schemas/README.md); the pod templates a PyTorchJob embeds are checked as Kubernetes
PodTemplateSpecs, which is what the real CRD embeds. KServe's ServingRuntime and InferenceService are
checked against KServe's own published CRDs, stored whole (schemas/kserve/, gzipped byte copies): their
openAPIV3Schema is used as it is, with `additionalProperties: false` added wherever the API server
would reject an unknown field (strict field validation), so nothing is reduced by hand.
"""

from __future__ import annotations

import gzip
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
# published CRDs kept whole (schemas/README.md): (apiVersion, kind) -> file under schemas/kserve/
FULL_CRDS = {
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "serving.kserve.io_servingruntimes.yaml.gz",
    ("serving.kserve.io/v1beta1", "InferenceService"): "serving.kserve.io_inferenceservices.yaml.gz",
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


def crd_schema(file_name: str, version: str) -> dict[str, Any]:
    """The openAPIV3Schema of one served version of a stored CRD, as published."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C parser: the InferenceService CRD is 2 MB
    crd = yaml.load(gzip.decompress((SCHEMA_DIR / "kserve" / file_name).read_bytes()), Loader=loader)  # noqa: S506
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version and entry.get("served", False):
            return entry["schema"]["openAPIV3Schema"]
    raise LookupError(f"{file_name} serves no version {version!r}")


def strict(schema: Any) -> Any:
    """A copy of a structural schema that rejects unknown fields, as the API server does in Strict mode.

    Objects with `properties` and neither `additionalProperties` nor x-kubernetes-preserve-unknown-fields
    get `additionalProperties: false`; the Kubernetes extensions (x-kubernetes-*) are left for jsonschema
    to ignore, except int-or-string, which becomes the union it means.
    """
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in ("items", "additionalProperties", "not"):
        if isinstance(schema.get(key), dict):
            out[key] = strict(schema[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            out[key] = strict(schema[key])
    if isinstance(schema.get("properties"), dict):
        out["properties"] = {name: strict(sub) for name, sub in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if schema.get("x-kubernetes-int-or-string"):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    return out


@cache
def full_crd_validator(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    """A validator of the stored CRD's schema (not meta-validated: 40 s for the InferenceService's 2 MB, and
    the API server has accepted it as a structural schema already)."""
    schema = strict(crd_schema(FULL_CRDS[(api_version, kind)], api_version.split("/")[1]))
    return jsonschema.Draft202012Validator(schema)


def schema_errors(resource: dict[str, Any], *, version: str) -> list[str]:
    """Every schema error found for one resource (empty when it validates)."""
    key = (resource.get("apiVersion"), resource.get("kind"))
    if key in FULL_CRDS:
        validator = full_crd_validator(*key)
        return [f"{_path(e.absolute_path)}: {e.message}" for e in validator.iter_errors(resource)]
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
