"""One run on the cluster, end to end: the run's job built from the rendered template for the chosen
operator, created (or adopted), followed to the end, and its run folder copied back as a model.

Two operators train the same template and config: Kubeflow Trainer v2 (`trainer-v2`: a TrainJob on the
repository's TrainingRuntime) and Training Operator v1 (`training-operator-v1`: a PyTorchJob with its
config in a ConfigMap owned by the job). The pods write /runs/<job> on the runs claim; a caller that
mounts that claim (the pipeline's launcher step) copies the checkpoint out with `fetch_run`, so a
multi-node run hands later steps the same model folder as a single-node one.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dino_model.config import TrainConfig
from dino_model.train.cluster import pytorchjob, trainjob
from dino_model.train.cluster.api import Clients, connect, create_config_map, create_or_adopt_job, wait_for_job
from dino_model.train.cluster.job import (
    PYTORCHJOB,
    TRAINJOB,
    ClusterJobError,
    JobOptions,
    Resource,
    checkpoint_path,
    cluster_config,
    config_yaml,
    run_dir,
    validate_options,
)
from dino_model.train.cluster.render import k8s_root, kustomize

logger = logging.getLogger(__name__)

TRAINER_V2, TRAINING_OPERATOR_V1 = "trainer-v2", "training-operator-v1"
OPERATORS = (TRAINER_V2, TRAINING_OPERATOR_V1)
RUN_FILES = ("checkpoint.pth", "config.yaml", "metrics.jsonl")  # what a trained run folder holds


def check_operator(operator: str) -> str:
    if operator not in OPERATORS:
        raise ClusterJobError(f"operator {operator!r} is not one of {', '.join(OPERATORS)}")
    return operator


def render_runtime(folder: str | Path | None = None) -> list[Resource]:
    """The TrainingRuntime as k8s/jobs/trainjob renders it (or the kustomization `folder`)."""
    return kustomize(Path(folder) if folder else k8s_root() / "jobs" / "trainjob")


def launch(resources: Sequence[Resource], options: JobOptions, cfg: TrainConfig | None = None, *,
           operator: str = TRAINING_OPERATOR_V1, runtime: Sequence[Resource] | None = None,
           overrides: Sequence[str] = (), data_root: str | None = None, clients: Clients | None = None,
           wait: bool = True, timeout_s: float = 7 * 86400.0, poll_s: float = 30.0) -> dict[str, Any]:
    """Create the run's job from the rendered template (a TrainJob on `runtime` for trainer-v2, else a
    PyTorchJob and its ConfigMap) and wait for it.

    `cfg` is the trainer config (None: the template's, with `overrides`). Returns the job's name,
    namespace and the checkpoint path on the runs claim (`/runs/<name>/checkpoint.pth`).
    """
    from dino_model.config import load_config_text

    check_operator(operator)
    validate_options(options)
    template, template_config = pytorchjob.template_parts(resources)
    base = cfg if cfg is not None else load_config_text(template_config, overrides)
    if operator == TRAINER_V2:
        job, result = _trainjob(template, list(runtime) if runtime is not None else render_runtime(), options,
                                base, data_root)
    else:
        job, result = _pytorchjob(template, options, base, data_root)
    clients = clients or connect()
    created = create_or_adopt_job(clients.custom, job)
    if operator == TRAINING_OPERATOR_V1:
        create_config_map(clients.core, pytorchjob.build_config_map(job, result.pop("config_text"), owner=created))
    result["uid"] = created["metadata"].get("uid")
    if wait:
        kind = TRAINJOB if operator == TRAINER_V2 else PYTORCHJOB
        wait_for_job(clients.custom, result["namespace"], options.name, timeout_s=timeout_s, poll_s=poll_s, kind=kind)
    return result


def _pytorchjob(template: Resource, options: JobOptions, base: TrainConfig, data_root: str | None
                ) -> tuple[Resource, dict[str, Any]]:
    job = pytorchjob.build_job(template, options)
    job["metadata"].setdefault("namespace", "default")
    gpus = pytorchjob.template_uses_gpus(job)
    run_cfg = cluster_config(base, options.name, gpus=gpus, data_root=data_root)
    nodes = sum(r["replicas"] for r in job["spec"]["pytorchReplicaSpecs"].values())
    result = _result(job, run_cfg, runs_claim=pytorchjob.runs_claim(job), nodes=nodes,
                     nproc=int(job["spec"]["nprocPerNode"]), gpus=gpus, operator=TRAINING_OPERATOR_V1)
    return job, {**result, "config_text": config_yaml(run_cfg)}


def _trainjob(template: Resource, runtime_resources: list[Resource], options: JobOptions, base: TrainConfig,
              data_root: str | None) -> tuple[Resource, dict[str, Any]]:
    runtime = trainjob.runtime_parts(runtime_resources)
    gpus = pytorchjob.template_uses_gpus(template) if options.gpus is None else options.gpus
    run_cfg = cluster_config(base, options.name, gpus=gpus, data_root=data_root)
    job = trainjob.build_trainjob(template, runtime, options, config_yaml(run_cfg))
    job["metadata"].setdefault("namespace", "default")
    trainer = job["spec"]["trainer"]
    result = _result(job, run_cfg, runs_claim=trainjob.runtime_runs_claim(runtime), nodes=trainer["numNodes"],
                     nproc=trainer["numProcPerNode"], gpus=gpus, operator=TRAINER_V2)
    return job, {**result, "runtime": runtime["metadata"]["name"]}


def _result(job: Resource, run_cfg: TrainConfig, *, runs_claim: str, nodes: int, nproc: int, gpus: bool,
            operator: str) -> dict[str, Any]:
    name = job["metadata"]["name"]
    return {"job": name, "kind": job["kind"], "operator": operator, "namespace": job["metadata"]["namespace"],
            "run_dir": run_dir(name), "checkpoint": checkpoint_path(name), "runs_claim": runs_claim,
            "claim_path": f"{name}/checkpoint.pth", "nodes": nodes, "nproc_per_node": nproc, "gpus": gpus,
            "data_version": run_cfg.data.version, "arch": run_cfg.model.arch}


def fetch_run(run_folder: str | Path, dest: str | Path) -> Path:
    """Copy a finished run folder's checkpoint, config and metrics into `dest` (a model artifact's folder);
    returns the copied checkpoint. ClusterJobError when the run left no checkpoint."""
    src, out = Path(run_folder), Path(dest)
    if not (src / "checkpoint.pth").is_file():
        raise ClusterJobError(f"{src} holds no checkpoint.pth: the job succeeded but its run folder is not "
                              "where this step mounts the runs claim (is the same claim mounted at /runs?)")
    out.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, out / f".{name}.part")
            (out / f".{name}.part").replace(out / name)
    logger.info("copied %s into %s (%d bytes of checkpoint)", src, out, (out / "checkpoint.pth").stat().st_size)
    return out / "checkpoint.pth"
