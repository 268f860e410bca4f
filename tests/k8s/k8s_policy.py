"""The project's security and operability policy for rendered workloads.

Every pod template (Deployments, CronJobs, PyTorchJob replicas, ...) must: pin its images (a tag
other than `latest`, or a digest); set CPU and memory requests and limits; run as non-root with no
privilege escalation, all capabilities dropped, a read-only root filesystem and the runtime's
seccomp profile; stay out of the host's namespaces; mount no Kubernetes API token (no dino-mlops
workload calls the API). Long-running workloads must also have readiness and liveness probes.
These are the Pod Security "restricted" rules plus pinning, limits and probes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from k8s_render import containers, pod_templates

LONG_RUNNING = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"})


@dataclass(frozen=True)
class Violation:
    where: str
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.where}: [{self.rule}] {self.detail}"


def check(resources: list[dict[str, Any]]) -> list[Violation]:
    """All policy violations in a list of rendered resources."""
    found: list[Violation] = []
    for resource in resources:
        long_running = resource["kind"] in LONG_RUNNING
        for where, template in pod_templates(resource):
            found += _check_pod(where, template.get("spec", {}), long_running=long_running)
    return found


def _check_pod(where: str, pod: dict[str, Any], *, long_running: bool) -> list[Violation]:
    found: list[Violation] = []
    pod_ctx = pod.get("securityContext", {})
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            found.append(Violation(where, "host-namespaces", f"{field} is true"))
    if pod.get("automountServiceAccountToken") is not False:
        found.append(Violation(where, "api-token", "automountServiceAccountToken is not false"))
    for c in containers(pod):
        cwhere = f"{where}/{c['name']}"
        ctx = c.get("securityContext", {})
        found += _check_image(cwhere, c.get("image", ""))
        found += _check_resources(cwhere, c.get("resources", {}))
        if long_running and c in pod.get("containers", []):
            for probe in ("readinessProbe", "livenessProbe"):
                if probe not in c:
                    found.append(Violation(cwhere, "probes", f"no {probe}"))
        non_root = ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot"))
        user = ctx.get("runAsUser", pod_ctx.get("runAsUser"))
        if non_root is not True:
            found.append(Violation(cwhere, "non-root", "runAsNonRoot is not true (pod or container)"))
        if user == 0:
            found.append(Violation(cwhere, "non-root", "runAsUser is 0"))
        if ctx.get("privileged"):
            found.append(Violation(cwhere, "privileged", "privileged is true"))
        if ctx.get("allowPrivilegeEscalation") is not False:
            found.append(Violation(cwhere, "privilege-escalation", "allowPrivilegeEscalation is not false"))
        if ctx.get("readOnlyRootFilesystem") is not True:
            found.append(Violation(cwhere, "read-only-root", "readOnlyRootFilesystem is not true"))
        caps = ctx.get("capabilities", {})
        if "ALL" not in caps.get("drop", []) or caps.get("add"):
            found.append(Violation(cwhere, "capabilities", f"capabilities {caps} do not drop ALL / add none"))
        seccomp = ctx.get("seccompProfile", pod_ctx.get("seccompProfile", {})).get("type")
        if seccomp not in {"RuntimeDefault", "Localhost"}:
            found.append(Violation(cwhere, "seccomp", f"seccompProfile type is {seccomp!r}"))
    return found


def _check_image(where: str, image: str) -> list[Violation]:
    if "@sha256:" in image:
        return []
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return [Violation(where, "image-tag", f"image {image!r} has no tag (implies latest)")]
    if last.rsplit(":", 1)[1] == "latest":
        return [Violation(where, "image-tag", f"image {image!r} uses the latest tag")]
    return []


def _check_resources(where: str, resources: dict[str, Any]) -> list[Violation]:
    found = []
    for section in ("requests", "limits"):
        missing = [k for k in ("cpu", "memory") if k not in resources.get(section, {})]
        if missing:
            found.append(Violation(where, section, f"no {section} for {', '.join(missing)}"))
    return found
