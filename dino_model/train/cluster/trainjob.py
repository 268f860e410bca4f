"""The TrainJob of one run (Kubeflow Trainer v2, trainer.kubeflow.org/v1alpha1), built from the same
rendered overlay as the PyTorchJob and referring to the repository's training runtime.

Trainer v2 splits a job in two: the TrainingRuntime (k8s/jobs/trainjob, installed once per namespace)
holds the pod (security context, claims, the `node` container running torchrun on the worker), and
each run's TrainJob sets only `spec.trainer`: image, numNodes, numProcPerNode, resourcesPerNode and
env. Those values come from the overlay's PyTorchJob template (k8s/overlays/<env>/pretrain: image,
resources, env, node and process counts) and the run's options, and the trainer config travels in
the env variable the runtime's `--config-env` names, so both operators train from one template and
one config. Pure: rendered dicts in, a dict out.
"""

from __future__ import annotations

import copy

from dino_model.train.cluster import pytorchjob
from dino_model.train.cluster.job import (
    INSTANCE_LABEL,
    RUNS_MOUNT,
    TRAINJOB,
    ClusterJobError,
    JobOptions,
    Resource,
    validate_options,
)
from dino_model.train.placement import GPU_RESOURCE

RUNTIME_KINDS = ("TrainingRuntime", "ClusterTrainingRuntime")
NODE = "node"  # the replicated job and container name Trainer v2's torch plugin wires
CONFIG_ENV = "DINO_CONFIG_YAML"  # the variable the runtime's `--config-env` reads


def runtime_parts(resources: list[Resource]) -> Resource:
    """The one training runtime among rendered resources, checked for what the TrainJob relies on."""
    found = [r for r in resources if r.get("kind") in RUNTIME_KINDS]
    if len(found) != 1:
        raise ClusterJobError(f"the rendered runtime must hold one of {'/'.join(RUNTIME_KINDS)}, found {len(found)}")
    runtime = found[0]
    name = runtime["metadata"]["name"]
    if runtime["metadata"].get("labels", {}).get("trainer.kubeflow.org/framework") != "torch":
        raise ClusterJobError(f"runtime {name} is not labelled trainer.kubeflow.org/framework=torch")
    args = node_container(runtime).get("args", [])
    if "--config-env" not in args or args[args.index("--config-env") + 1:][:1] != [CONFIG_ENV]:
        raise ClusterJobError(f"runtime {name}'s {NODE} container must read its config with --config-env {CONFIG_ENV}")
    return runtime


def node_pod(runtime: Resource) -> Resource:
    """The pod spec of the runtime's `node` replicated job."""
    jobs = [j for j in runtime.get("spec", {}).get("template", {}).get("spec", {}).get("replicatedJobs", [])
            if j.get("name") == NODE]
    if len(jobs) != 1:
        raise ClusterJobError(f"runtime {runtime['metadata']['name']} has no replicated job named {NODE!r}")
    return jobs[0]["template"]["spec"]["template"]["spec"]


def node_container(runtime: Resource) -> Resource:
    found = [c for c in node_pod(runtime).get("containers", []) if c.get("name") == NODE]
    if len(found) != 1:
        raise ClusterJobError(f"runtime {runtime['metadata']['name']} needs one container named {NODE!r}")
    return found[0]


def runtime_runs_claim(runtime: Resource) -> str:
    """The claim the runtime's pods mount at /runs."""
    pod = node_pod(runtime)
    mount = next((m for m in node_container(runtime).get("volumeMounts", []) if m["mountPath"] == RUNS_MOUNT), None)
    volume = next((v for v in pod.get("volumes", []) if mount and v["name"] == mount["name"]), None)
    if volume is None or "persistentVolumeClaim" not in volume:
        raise ClusterJobError(f"runtime {runtime['metadata']['name']} mounts no claim at {RUNS_MOUNT}")
    return volume["persistentVolumeClaim"]["claimName"]


def build_trainjob(template: Resource, runtime: Resource, options: JobOptions, config_text: str) -> Resource:
    """The TrainJob of one run: `template` (the overlay's rendered PyTorchJob) and `options` give its trainer
    fields, `config_text` its trainer config, `runtime` the pods it refers to (pure)."""
    validate_options(options)
    _refuse_claim_options(options, runtime)
    master = pytorchjob.master_container(template)
    replicas = template["spec"]["pytorchReplicaSpecs"]
    nodes = options.nodes if options.nodes is not None else sum(r.get("replicas", 1) for r in replicas.values())
    nproc = options.nproc_per_node if options.nproc_per_node is not None else int(template["spec"].get(
        "nprocPerNode", "1"))
    gpus = pytorchjob.template_uses_gpus(template) if options.gpus is None else options.gpus
    meta = template["metadata"]
    labels = {**meta.get("labels", {}), INSTANCE_LABEL: options.name}
    metadata: Resource = {"name": options.name, "labels": labels}
    if options.namespace or meta.get("namespace"):
        metadata["namespace"] = options.namespace or meta["namespace"]
    env = _env([*master.get("env", []), *({"name": k, "value": v} for k, v in options.env),
                {"name": CONFIG_ENV, "value": config_text}])
    trainer = {"image": options.image or master["image"], "numNodes": nodes, "numProcPerNode": nproc,
               "resourcesPerNode": _resources(master.get("resources", {}), nproc if gpus else 0), "env": env}
    return {"apiVersion": TRAINJOB.api_version, "kind": TRAINJOB.kind, "metadata": metadata,
            "spec": {"runtimeRef": {"apiGroup": TRAINJOB.group, "kind": runtime["kind"],
                                    "name": runtime["metadata"]["name"]}, "trainer": trainer}}


def uses_gpus(job: Resource) -> bool:
    limits = job["spec"]["trainer"].get("resourcesPerNode", {}).get("limits", {})
    return int(limits.get(GPU_RESOURCE, 0)) > 0


def _refuse_claim_options(options: JobOptions, runtime: Resource) -> None:
    given = [flag for flag, value in (("data-claim", options.data_claim), ("data-subpath", options.data_subpath),
                                      ("runs-claim", options.runs_claim)) if value]
    if given:
        raise ClusterJobError(f"--{', --'.join(given)}: a TrainJob's claims are those of its runtime "
                              f"{runtime['metadata']['name']} (k8s/jobs/trainjob/runtime.yaml); choose the data "
                              "version with --data-root under /data")


def _env(entries: list[Resource]) -> list[Resource]:
    """Later entries win, in first-seen order."""
    merged: dict[str, Resource] = {}
    for entry in entries:
        merged[entry["name"]] = entry
    return [dict(e) for e in merged.values()]


def _resources(resources: Resource, gpus: int) -> Resource:
    """The template's requests and limits with `gpus` GPUs (0: none)."""
    out = copy.deepcopy(resources)
    for key in ("requests", "limits"):
        values = out.setdefault(key, {})
        if gpus:
            values[GPU_RESOURCE] = str(gpus)
        else:
            values.pop(GPU_RESOURCE, None)
    return out
