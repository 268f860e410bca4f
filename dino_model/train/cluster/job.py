"""What every cluster training job of a run shares, whatever operator runs it: its name, the options a
run changes, the trainer config the pods read, and the two job kinds the launcher knows.

A run is one job named after the run id, so a retried step finds the job an earlier attempt created.
The pods read the data claim at /data and write the run folder /runs/<job> on the runs claim; the
config says so (`cluster_config`). Pure: nothing here renders manifests or calls the API.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from dino_model.config import TrainConfig
from dino_model.errors import DinoError

DATA_MOUNT, RUNS_MOUNT = "/data", "/runs"
NAME_PREFIX = "dino-pretrain-"
# DNS-1123 label (the operator validates DNS-1035: starts with a letter, which the prefix ensures);
# 52 leaves room for the operator's `<name>-worker-<index>` Service names within 63 characters.
MAX_NAME_LEN = 52
INSTANCE_LABEL = "app.kubernetes.io/instance"
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

Resource = dict[str, Any]


class ClusterJobError(DinoError):
    """A cluster training job cannot be built, created or followed, or it failed."""


@dataclass(frozen=True)
class JobKind:
    """A custom resource the launcher creates and follows: its API coordinates and its success condition."""

    group: str
    version: str
    plural: str
    kind: str
    succeeded: str  # the status condition type that ends a successful job

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


PYTORCHJOB = JobKind("kubeflow.org", "v1", "pytorchjobs", "PyTorchJob", "Succeeded")
TRAINJOB = JobKind("trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob", "Complete")
KINDS = {k.kind: k for k in (PYTORCHJOB, TRAINJOB)}


def kind_of(job: Resource) -> JobKind:
    """The JobKind of a job resource; ClusterJobError for any other kind."""
    kind = KINDS.get(job.get("kind", ""))
    if kind is None or job.get("apiVersion") != kind.api_version:
        raise ClusterJobError(f"{job.get('apiVersion')}/{job.get('kind')} is not a job the launcher knows "
                              f"({', '.join(k.api_version + '/' + k.kind for k in KINDS.values())})")
    return kind


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


def env_pairs(values: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """Non-empty entries as JobOptions.env."""
    return tuple((k, v) for k, v in values.items() if v)
