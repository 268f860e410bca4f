"""Every kustomization renders offline and yields the resources the platform needs."""

from __future__ import annotations

import pytest
from k8s_render import INSTALLS, LAUNCHES, TARGETS, find, name_of, render

NAMESPACES = {"dev": "dino-mlops-dev", "prod-gpu": "dino-mlops"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_target_renders(rendered, target: str) -> None:
    resources = rendered[target]
    assert resources, f"{target} rendered nothing"
    names = [name_of(r) for r in resources]
    assert len(names) == len(set(names)), f"duplicate resources in {target}"


@pytest.mark.parametrize("env", sorted(INSTALLS))
def test_install_has_every_part(rendered, env: str) -> None:
    resources = rendered[env]
    kinds = {r["kind"] for r in resources}
    assert {
        "Namespace", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
        "ServiceMonitor", "PrometheusRule", "CronJob", "ServiceAccount", "Role", "RoleBinding",
        "NetworkPolicy", "PersistentVolumeClaim", "ConfigMap",
    } <= kinds
    dashboards = [c for c in find(resources, "ConfigMap") if c["metadata"]["labels"].get("grafana_dashboard") == "1"]
    assert len(dashboards) == 1 and any(key.endswith(".json") for key in dashboards[0]["data"])
    assert "PyTorchJob" not in kinds, "the PyTorchJob is a launch template, not part of the install"
    assert {r["kind"] for r in rendered[f"{env}/pretrain"]} == {"PyTorchJob", "ConfigMap"}


@pytest.mark.parametrize("env", sorted(INSTALLS))
def test_everything_lands_in_one_namespace(rendered, env: str) -> None:
    namespace = NAMESPACES[env]
    assert [r["metadata"]["name"] for r in find(rendered[env], "Namespace")] == [namespace]
    for target in (env, f"{env}/pretrain"):
        for r in rendered[target]:
            if r["kind"] not in CLUSTER_SCOPED:
                assert r["metadata"].get("namespace") == namespace, f"{name_of(r)} in {target}"


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_common_labels(rendered, target: str) -> None:
    for r in rendered[target]:
        assert r["metadata"].get("labels", {}).get("app.kubernetes.io/name") == "dino-mlops", name_of(r)


def test_overlays_share_the_base(rendered) -> None:
    """dev and prod-gpu hold the same resources; neither holds a Secret (no key in the repository)."""

    def shapes(env: str) -> set[tuple[str, str]]:
        return {(r["kind"], _unhashed(r)) for r in rendered[env] if r["kind"] != "Namespace"}

    assert shapes("dev") - shapes("prod-gpu") == set()
    assert not [r for env in ("dev", "prod-gpu") for r in rendered[env] if r["kind"] == "Secret"]
    assert shapes("prod-gpu") - shapes("dev") == set()


def _unhashed(resource) -> str:
    """A generated ConfigMap/Secret name without kustomize's content-hash suffix."""
    name = resource["metadata"]["name"]
    stem, _, suffix = name.rpartition("-")
    generated = resource["kind"] in {"ConfigMap", "Secret"} and len(suffix) == 10 and suffix.isalnum()
    return stem if generated else name


def test_launch_templates_render_standalone() -> None:
    for path in LAUNCHES.values():
        assert render(path)


def test_render_reports_a_broken_kustomization(tmp_path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources:\n  - missing.yaml\n")
    with pytest.raises(RuntimeError, match="missing.yaml"):
        render(tmp_path)
