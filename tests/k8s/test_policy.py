"""The policy (pinned images, requests and limits, probes, non-root, ...) holds for every render and
catches each kind of bad manifest."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable

import pytest
from k8s_policy import check
from k8s_render import INSTALLS, TARGETS, one, render


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_rendered_manifests_follow_the_policy(rendered, target: str) -> None:
    violations = check(rendered[target])
    assert not violations, "\n".join(map(str, violations))


def _pod(d):
    return d["spec"]["template"]["spec"]


def _container(d):
    return _pod(d)["containers"][0]


BAD_VARIANTS: dict[str, tuple[Callable[[dict], None], str]] = {
    "latest tag": (lambda d: _container(d).update(image="nvcr.io/nvidia/tritonserver:latest"), "image-tag"),
    "no tag": (lambda d: _container(d).update(image="nvcr.io/nvidia/tritonserver"), "image-tag"),
    "no limits": (lambda d: _container(d)["resources"].pop("limits"), "limits"),
    "no memory limit": (lambda d: _container(d)["resources"]["limits"].pop("memory"), "limits"),
    "no requests": (lambda d: _container(d)["resources"].pop("requests"), "requests"),
    "no readiness probe": (lambda d: _container(d).pop("readinessProbe"), "probes"),
    "no liveness probe": (lambda d: _container(d).pop("livenessProbe"), "probes"),
    "runAsNonRoot missing": (lambda d: _pod(d)["securityContext"].pop("runAsNonRoot"), "non-root"),
    "root user": (lambda d: _container(d)["securityContext"].update(runAsUser=0), "non-root"),
    "privilege escalation": (
        lambda d: _container(d)["securityContext"].update(allowPrivilegeEscalation=True), "privilege-escalation"),
    "writable root": (lambda d: _container(d)["securityContext"].pop("readOnlyRootFilesystem"), "read-only-root"),
    "added capability": (
        lambda d: _container(d)["securityContext"]["capabilities"].update(add=["NET_ADMIN"]), "capabilities"),
    "privileged": (lambda d: _container(d)["securityContext"].update(privileged=True), "privileged"),
    "no seccomp": (lambda d: _pod(d)["securityContext"].pop("seccompProfile"), "seccomp"),
    "host network": (lambda d: _pod(d).update(hostNetwork=True), "host-namespaces"),
    "api token": (lambda d: _pod(d).pop("automountServiceAccountToken"), "api-token"),
}


@pytest.mark.parametrize("variant", sorted(BAD_VARIANTS))
def test_policy_catches_a_bad_deployment(rendered, variant: str) -> None:
    mutate, rule = BAD_VARIANTS[variant]
    bad = copy.deepcopy(one(rendered["prod-gpu"], "Deployment", "triton"))
    mutate(bad)
    assert {v.rule for v in check([bad])} == {rule}


def test_policy_reaches_cronjob_and_pytorchjob_templates(rendered) -> None:
    cron = copy.deepcopy(one(rendered["prod-gpu"], "CronJob", "retrain-check"))
    cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["image"] = "dino-mlops:latest"
    job = copy.deepcopy(one(rendered["prod-gpu/pretrain"], "PyTorchJob", "dino-pretrain"))
    del job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    found = {(v.where, v.rule) for v in check([cron, job])}
    assert found == {
        ("CronJob/retrain-check/retrain-check", "image-tag"),
        ("PyTorchJob/dino-pretrain[Worker]/pytorch", "limits"),
    }


def test_batch_pods_need_no_probes(rendered) -> None:
    cron = one(rendered["prod-gpu"], "CronJob", "retrain-check")
    assert "livenessProbe" not in cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert not check([cron])


def test_policy_fails_a_bad_overlay_rendered_by_kustomize(tmp_path) -> None:
    """An overlay that unpins Triton, drops its limits and its liveness probe renders fine but fails the policy."""
    base = os.path.relpath(INSTALLS["prod-gpu"], tmp_path)
    (tmp_path / "kustomization.yaml").write_text(f"""\
resources:
  - {base}
images:
  - name: nvcr.io/nvidia/tritonserver
    newTag: latest
patches:
  - target: {{kind: Deployment, name: triton}}
    patch: |-
      - op: remove
        path: /spec/template/spec/containers/0/resources/limits
      - op: remove
        path: /spec/template/spec/containers/0/livenessProbe
""")
    violations = check(render(tmp_path))
    assert {(v.where, v.rule) for v in violations} == {
        ("Deployment/triton/tritonserver", "image-tag"),
        ("Deployment/triton/model-repository", "image-tag"),  # the init container uses the same image
        ("Deployment/triton/tritonserver", "limits"),
        ("Deployment/triton/tritonserver", "probes"),
    }
