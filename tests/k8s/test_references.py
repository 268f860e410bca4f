"""What pods refer to exists: volumes behind mounts, ports behind probes, and every ConfigMap, Secret,
claim and ServiceAccount either rendered or listed here as created by the operator (and documented)."""

from __future__ import annotations

import pytest
from k8s_render import INSTALLS, REPO_ROOT, all_pod_templates, containers, find, references

OPERATIONS_GUIDE = REPO_ROOT / "docs" / "operations.md"
# Secrets the operator creates (docs/operations.md); a required one stops the pod from starting
OPERATOR_SECRETS = {
    "triton-admin-key": "required",
    "dvc-remote-credentials": "optional: S3-compatible DVC remote",
    "data-repo-credentials": "optional: private data repository",
}
REQUIRED_BY_ENV = {"dev": {"triton-admin-key"}, "prod-gpu": {"triton-admin-key"}}


@pytest.mark.parametrize("env", sorted(INSTALLS))
def test_references_resolve(rendered, env: str) -> None:
    installed = {(r["kind"], r["metadata"]["name"]) for r in rendered[env]}
    missing_required, missing_optional = set(), set()
    for target in (env, f"{env}/pretrain"):
        available = installed | {(r["kind"], r["metadata"]["name"]) for r in rendered[target]}
        for where, template in all_pod_templates(rendered[target]):
            for kind, name, optional in references(template["spec"]):
                if (kind, name) not in available:
                    assert kind == "Secret", f"{where} refers to {kind}/{name}, which nothing creates"
                    (missing_optional if optional else missing_required).add(name)
    assert missing_required == REQUIRED_BY_ENV[env]
    assert missing_required | missing_optional <= set(OPERATOR_SECRETS)


def test_operator_secrets_are_documented() -> None:
    guide = OPERATIONS_GUIDE.read_text()
    assert [s for s in OPERATOR_SECRETS if s not in guide] == []


@pytest.mark.parametrize("env", sorted(INSTALLS))
def test_mounts_probes_and_service_accounts(rendered, env: str) -> None:
    for target in (env, f"{env}/pretrain"):
        for where, template in all_pod_templates(rendered[target]):
            pod = template["spec"]
            volumes = {v["name"] for v in pod.get("volumes", [])}
            for c in containers(pod):
                mounts = {m["name"] for m in c.get("volumeMounts", [])}
                assert mounts <= volumes, f"{where}/{c['name']} mounts undeclared volumes {mounts - volumes}"
                ports = {p["name"] for p in c.get("ports", [])}
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    port = c.get(probe, {}).get("httpGet", {}).get("port")
                    assert port is None or port in ports, f"{where}: {probe} on unknown port {port}"
            assert volumes == {v for c in containers(pod) for v in (m["name"] for m in c.get("volumeMounts", []))}, (
                f"{where} declares volumes no container mounts")
            account = next(a for a in find(rendered[env], "ServiceAccount") if a["metadata"]["name"] ==
                           pod["serviceAccountName"])
            assert account["automountServiceAccountToken"] is False
