"""Image capture on Kubernetes (k8s/components/capture): switched on in Triton and in the flywheel, nowhere else.

Rendered as an install includes it: k8s/overlays/dev-capture (dev with the component), and prod-gpu wrapped
by an operator's overlay that keeps its namespace. Triton gets DINO_CAPTURE_ENABLED=1 and the store at
/captures on the claim triton-captures, the retraining check mounts the same claim and retrain-settings
names it (the flywheel's switch); the restricted pod policy, the schemas, the references and the
NetworkPolicies (Triton: ingress only, DNS out) are those of the install without the component.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from k8s_policy import check
from k8s_render import K8S_DIR, Resource, all_pod_templates, containers, find, one, references, render
from k8s_schema import k8s_versions, schema_errors

COMPONENT = K8S_DIR / "components" / "capture"
NAMESPACES = {"dev": "dino-mlops-dev", "prod-gpu": "dino-mlops"}
STORE = "/captures"


def _wrapped(overlay: Path, namespace: str, workdir: Path) -> Path:
    """An operator's overlay: `overlay` with the capture component, in the same namespace."""
    workdir.mkdir()
    kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                     "namespace": namespace, "resources": [os.path.relpath(overlay, workdir)],
                     "components": [os.path.relpath(COMPONENT, workdir)]}
    (workdir / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return workdir


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Resource]]:
    prod = _wrapped(K8S_DIR / "overlays" / "prod-gpu", NAMESPACES["prod-gpu"], tmp_path_factory.mktemp("op") / "o")
    return {"dev": render(K8S_DIR / "overlays" / "dev-capture"), "prod-gpu": render(prod)}


def _triton(resources: list[Resource]) -> tuple[dict, dict]:
    pod = one(resources, "Deployment", "triton")["spec"]["template"]["spec"]
    return pod, next(c for c in pod["containers"] if c["name"] == "tritonserver")


def _cron(resources: list[Resource]) -> tuple[dict, dict]:
    pod = one(resources, "CronJob", "retrain-check")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container


def _claim_mounted_at(pod: dict, container: dict, path: str) -> tuple[str, bool]:
    """(claim name, read-only) of the volume `container` mounts at `path`."""
    (mount,) = [m for m in container.get("volumeMounts", []) if m["mountPath"] == path]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    return volume["persistentVolumeClaim"]["claimName"], bool(mount.get("readOnly"))


def _settings(resources: list[Resource], container: dict) -> dict[str, str]:
    names = [s["configMapRef"]["name"] for s in container["envFrom"] if "configMapRef" in s]
    return {k: v for name in names for k, v in one(resources, "ConfigMap", name)["data"].items()}


@pytest.mark.parametrize("env", sorted(NAMESPACES))
def test_triton_captures_into_the_claim_and_the_flywheel_reads_it(captured, env: str) -> None:
    from pipelines.flywheel import flywheel_settings_from_env

    resources = captured[env]
    pod, triton = _triton(resources)
    environ = {e["name"]: e.get("value") for e in triton["env"]}
    assert environ["DINO_CAPTURE_ENABLED"] == "1" and environ["DINO_CAPTURE_STORE"] == STORE
    assert _claim_mounted_at(pod, triton, STORE) == ("triton-captures", False)  # Triton writes the store
    cron_pod, check_container = _cron(resources)
    assert _claim_mounted_at(cron_pod, check_container, STORE) == ("triton-captures", False)
    settings = _settings(resources, check_container)
    assert settings["DINO_CAPTURE_STORE"] == STORE
    assert flywheel_settings_from_env(settings).enabled  # the flywheel trigger is on
    (claim,) = find(resources, "PersistentVolumeClaim", "triton-captures")
    triton_namespace = one(resources, "Deployment", "triton")["metadata"]["namespace"]
    assert claim["metadata"]["namespace"] == NAMESPACES[env] == triton_namespace
    assert claim["metadata"]["labels"]["app.kubernetes.io/name"] == "dino-mlops"


def test_the_claim_is_shared_across_nodes_except_on_single_node_dev(captured) -> None:
    access = {env: one(captured[env], "PersistentVolumeClaim", "triton-captures")["spec"]["accessModes"]
              for env in captured}
    assert access == {"dev": ["ReadWriteOnce"], "prod-gpu": ["ReadWriteMany"]}


@pytest.mark.parametrize("env", sorted(NAMESPACES))
def test_without_the_component_nothing_is_captured(rendered, env: str) -> None:
    resources = rendered[env]
    _, triton = _triton(resources)
    assert not [e for e in triton["env"] if e["name"].startswith("DINO_CAPTURE_")]
    assert "DINO_CAPTURE_STORE" not in _settings(resources, _cron(resources)[1])
    assert not find(resources, "PersistentVolumeClaim", "triton-captures")


@pytest.mark.parametrize("env", sorted(NAMESPACES))
def test_the_policy_schemas_and_references_hold_with_the_component(captured, env: str) -> None:
    resources = captured[env]
    violations = check(resources)
    assert not violations, "\n".join(map(str, violations))
    for version in k8s_versions():
        failures = {f"{r['kind']}/{r['metadata']['name']}": e for r in resources
                    if (e := schema_errors(r, version=version))}
        assert not failures, failures
    available = {(r["kind"], r["metadata"]["name"]) for r in resources}
    for where, template in all_pod_templates(resources):
        for kind, name, _ in references(template["spec"]):
            assert kind == "Secret" or (kind, name) in available, f"{where} refers to {kind}/{name}"
        volumes = {v["name"] for v in template["spec"].get("volumes", [])}
        for c in containers(template["spec"]):
            assert {m["name"] for m in c.get("volumeMounts", [])} <= volumes, where


@pytest.mark.parametrize("env", sorted(NAMESPACES))
def test_the_component_opens_no_connection(rendered, captured, env: str) -> None:
    """The NetworkPolicies and the labels they select by are the install's own: nca's verdicts for the install
    (tests/k8s/test_network.py: Triton ingress from labelled clients, out to DNS only) hold unchanged."""
    def policies(resources: list[Resource]) -> list[Resource]:
        return sorted(find(resources, "NetworkPolicy"), key=lambda p: p["metadata"]["name"])

    def labels(resources: list[Resource]) -> dict[str, dict]:
        return {where: template["metadata"].get("labels", {}) for where, template in all_pod_templates(resources)}

    assert policies(captured[env]) == policies(rendered[env])
    assert labels(captured[env]) == labels(rendered[env])
