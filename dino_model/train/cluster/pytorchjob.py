"""The PyTorchJob of one run (Kubeflow Training Operator v1, kubeflow.org/v1; operator v1.9), built from
the rendered template k8s/jobs/pretrain as an overlay renders it.

The template gives the pods (security context, volumes, the `pytorch` container running torchrun on the
worker); a run changes only its name, image, node and process counts, GPUs, claims, env and the name of
the ConfigMap holding its trainer config (`build_job`, `build_config_map`). Pure: rendered dicts in,
dicts out, so everything is tested offline.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import PurePosixPath

from dino_model.train.cluster.job import (
    DATA_MOUNT,
    INSTANCE_LABEL,
    PYTORCHJOB,
    RUNS_MOUNT,
    ClusterJobError,
    JobOptions,
    Resource,
    validate_options,
)
from dino_model.train.placement import GPU_RESOURCE, gpu_node_selector, gpu_tolerations

KIND = PYTORCHJOB.kind
CONTAINER = "pytorch"  # the only container name the operator wires
CONFIG_KEY = "config.yaml"  # the ConfigMap key the template's --config path names


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


def master_container(job: Resource) -> Resource:
    """The `pytorch` container of the job's Master pod."""
    return _container(_pod_spec(job, "Master"))


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


def runs_claim(job: Resource) -> str:
    """The claim the job mounts at /runs."""
    pod = _pod_spec(job, "Master")
    return _volume(pod, _mount(_container(pod), RUNS_MOUNT)["name"])["persistentVolumeClaim"]["claimName"]
