"""Multi-node pretraining on Kubernetes: one run as a Kubeflow Trainer v2 TrainJob or a Training
Operator v1 PyTorchJob, launched from the CLI (`dino-mlops pretrain --cluster`) or a pipeline step.

One node trains in the launching process (`dino_model.train.worker`); more nodes need pods that find
each other, which the operator provides. One module per job:
- `job`: what a run changes (name, options, the trainer config the pods read), for either kind;
- `render`: the templates as `kubectl kustomize` renders them from k8s/;
- `pytorchjob` and `trainjob`: the run's job built from the rendered template (pure);
- `api`: the Kubernetes API calls (create or adopt, ConfigMap, follow the status);
- `launcher`: the whole launch, and copying the run's checkpoint back as a model.
The names below are the package's public API.
"""

from dino_model.train.cluster.api import (
    Clients,
    connect,
    create_config_map,
    create_or_adopt_job,
    job_state,
    wait_for_job,
)
from dino_model.train.cluster.job import (
    MAX_NAME_LEN,
    PYTORCHJOB,
    TRAINJOB,
    ClusterJobError,
    JobOptions,
    checkpoint_path,
    cluster_config,
    config_yaml,
    env_pairs,
    job_name,
    new_run_id,
    run_dir,
    validate_options,
)
from dino_model.train.cluster.launcher import (
    OPERATORS,
    TRAINER_V2,
    TRAINING_OPERATOR_V1,
    check_operator,
    fetch_run,
    launch,
    render_runtime,
)
from dino_model.train.cluster.pytorchjob import build_config_map, build_job, template_parts, template_uses_gpus
from dino_model.train.cluster.render import k8s_root, kustomize, overlay_dir, parse_rendered, render_overlay
from dino_model.train.cluster.trainjob import build_trainjob, runtime_parts

__all__ = [
    "MAX_NAME_LEN", "OPERATORS", "PYTORCHJOB", "TRAINER_V2", "TRAINING_OPERATOR_V1", "TRAINJOB", "Clients",
    "ClusterJobError", "JobOptions", "build_config_map", "build_job", "build_trainjob", "check_operator",
    "checkpoint_path", "cluster_config", "config_yaml", "connect", "create_config_map", "create_or_adopt_job",
    "env_pairs", "fetch_run", "job_name", "job_state", "k8s_root", "kustomize", "launch", "new_run_id",
    "overlay_dir", "parse_rendered", "render_overlay", "render_runtime", "run_dir", "runtime_parts",
    "template_parts", "template_uses_gpus", "validate_options", "wait_for_job",
]
