"""The Kubernetes API calls of a cluster training job, and nothing else: create the job (a 409 adopts the
job a previous attempt of the same run created), create a ConfigMap owned by it, and poll its status
conditions until it succeeds or fails.

Each call has a timeout; these are the only rights the launcher's Role grants
(k8s/base/training/launcher-rbac.yaml). The job's kind (PyTorchJob or TrainJob) comes from the job
itself, so one client follows both operators.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dino_model.train.cluster.job import PYTORCHJOB, ClusterJobError, JobKind, Resource, kind_of

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = (10.0, 60.0)  # connect, read: every API call
TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class Clients:
    custom: Any  # kubernetes.client.CustomObjectsApi: the job
    core: Any  # kubernetes.client.CoreV1Api: its ConfigMap


def connect() -> Clients:
    """API clients from the pod's ServiceAccount when in a cluster, else from the kubeconfig."""
    from kubernetes import client, config

    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()
        else:
            config.load_kube_config()
    except config.ConfigException as exc:
        raise ClusterJobError(f"no Kubernetes API configuration: {exc}") from None
    api = client.ApiClient()
    return Clients(custom=client.CustomObjectsApi(api), core=client.CoreV1Api(api))


def create_or_adopt_job(custom: Any, job: Resource) -> Resource:
    """Create the job; when one of that name exists (a retried step), adopt it."""
    from kubernetes.client.exceptions import ApiException

    kind = kind_of(job)
    namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
    try:
        created = custom.create_namespaced_custom_object(kind.group, kind.version, namespace, kind.plural, job,
                                                         _request_timeout=REQUEST_TIMEOUT_S)
        logger.info("created %s %s/%s", kind.kind, namespace, name)
        return created
    except ApiException as exc:
        if exc.status != 409:
            raise ClusterJobError(f"creating {kind.kind} {namespace}/{name} failed: {_api_message(exc)}") from None
    existing = _get_job(custom, kind, namespace, name)
    logger.info("%s %s/%s exists already (uid %s): adopting it", kind.kind, namespace, name,
                existing["metadata"].get("uid"))
    return existing


def create_config_map(core: Any, config_map: Resource) -> None:
    """Create the job's ConfigMap; one of that name (from an earlier attempt of the run) is kept."""
    from kubernetes.client.exceptions import ApiException

    namespace, name = config_map["metadata"]["namespace"], config_map["metadata"]["name"]
    try:
        core.create_namespaced_config_map(namespace, config_map, _request_timeout=REQUEST_TIMEOUT_S)
        logger.info("created ConfigMap %s/%s", namespace, name)
    except ApiException as exc:
        if exc.status != 409:
            raise ClusterJobError(f"creating ConfigMap {namespace}/{name} failed: {_api_message(exc)}; the "
                                  "job waits for it, launch the same run again to retry") from None
        logger.info("ConfigMap %s/%s exists already: keeping it", namespace, name)


def job_state(job: Resource, succeeded: str = PYTORCHJOB.succeeded) -> tuple[str, str, str]:
    """(phase, reason, message) of the job's latest condition whose status is True; phase '' when none yet.
    A terminal condition (Failed, or `succeeded`: Succeeded for a PyTorchJob, Complete for a TrainJob) wins."""
    conditions = [c for c in job.get("status", {}).get("conditions", []) or [] if c.get("status") == "True"]
    for terminal in ("Failed", succeeded):
        for c in conditions:
            if c.get("type") == terminal:
                return terminal, c.get("reason", ""), c.get("message", "")
    if not conditions:
        return "", "", ""
    last = conditions[-1]
    return last.get("type", ""), last.get("reason", ""), last.get("message", "")


def wait_for_job(custom: Any, namespace: str, name: str, *, timeout_s: float, poll_s: float = 30.0,
                 log_every_s: float = 600.0, kind: JobKind = PYTORCHJOB,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep
                 ) -> Resource:
    """Poll the job until it succeeded (returned) or Failed (ClusterJobError with its message), at most
    `timeout_s`; transient API errors are retried until then."""
    start = clock()
    deadline = start + timeout_s
    seen: tuple[str, str] | None = None
    last_log = start
    while True:
        job = _poll(custom, kind, namespace, name)
        now = clock()
        if job is not None:
            phase, reason, message = job_state(job, kind.succeeded)
            if phase == kind.succeeded:
                logger.info("%s %s/%s succeeded after %.0f s", kind.kind, namespace, name, now - start)
                return job
            if phase == "Failed":
                raise ClusterJobError(f"{kind.kind} {namespace}/{name} failed: {_one_line(message or reason)}")
            if (phase, reason) != seen or now - last_log >= log_every_s:
                logger.info("%s %s/%s: %s%s after %.0f s%s", kind.kind, namespace, name, phase or "pending",
                            f" ({reason})" if reason else "", now - start, _replica_summary(job))
                seen, last_log = (phase, reason), now
        if now >= deadline:
            last = f"; last state {seen[0] or 'pending'}" if seen else ""
            raise ClusterJobError(f"{kind.kind} {namespace}/{name} did not finish within {timeout_s:.0f} s{last}; "
                                  "it keeps running, launch the same run again to follow it")
        sleep(min(poll_s, max(deadline - now, 0.0)))


def _poll(custom: Any, kind: JobKind, namespace: str, name: str) -> Resource | None:
    """The job as the API returns it; None after a transient error (logged)."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        return _get_job(custom, kind, namespace, name, raw=True)
    except ApiException as exc:
        if exc.status not in TRANSIENT_STATUS:
            raise ClusterJobError(f"reading {kind.kind} {namespace}/{name} failed: {_api_message(exc)}") from None
        logger.warning("reading %s %s/%s: %s; retrying", kind.kind, namespace, name, _api_message(exc))
    except HTTPError as exc:
        logger.warning("reading %s %s/%s: %s; retrying", kind.kind, namespace, name, _one_line(str(exc)))
    return None


def _get_job(custom: Any, kind: JobKind, namespace: str, name: str, *, raw: bool = False) -> Resource:
    from kubernetes.client.exceptions import ApiException

    try:
        return custom.get_namespaced_custom_object(kind.group, kind.version, namespace, kind.plural, name,
                                                   _request_timeout=REQUEST_TIMEOUT_S)
    except ApiException as exc:
        if raw:
            raise
        raise ClusterJobError(f"reading {kind.kind} {namespace}/{name} failed: {_api_message(exc)}") from None


def _replica_summary(job: Resource) -> str:
    """Pod counts per role: a PyTorchJob's replicaStatuses, a TrainJob's jobsStatus."""
    status = job.get("status", {})
    statuses = status.get("replicaStatuses") or {s.get("name", "?"): s for s in status.get("jobsStatus") or []}
    parts = [f"{role} " + ", ".join(f"{k} {v}" for k, v in sorted(s.items()) if isinstance(v, int))
             for role, s in sorted(statuses.items())]
    return f" [{'; '.join(p for p in parts if p.strip())}]" if parts else ""


def _api_message(exc: Any) -> str:
    """`<status> <reason>: <message>` of an ApiException, on one line."""
    message = ""
    try:
        message = json.loads(exc.body or "{}").get("message", "")
    except (ValueError, AttributeError, TypeError):
        message = str(exc.body or "")
    hint = " (the launcher's Role: k8s/base/training/launcher-rbac.yaml)" if exc.status == 403 else ""
    return _one_line(f"{exc.status} {exc.reason}" + (f": {message}" if message else "") + hint)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())
