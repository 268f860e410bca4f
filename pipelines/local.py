"""The main job on one machine: the training pipeline through kfp.local, served by a local Triton.

Same pipeline as on the cluster, with embedded defaults: the digits data set versioned by DVC in
this repository with a local remote (the data step clones this repository as it would clone the
data repository on a cluster), the tiny ViT config, CPU, and a local tritonserver that keeps
serving after the run. kfp.local ignores the GPU and Kubernetes settings, which the compiled IR
carries for the cluster.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from dino_model.config import resolve_config_path
from dino_model.errors import PipelineError
from dino_model.serving.client import GRPC_PORT, HTTP_PORT, METRICS_PORT
from dino_model.triton.config import DEFAULT_MODEL_NAME

logger = logging.getLogger(__name__)

LOCAL_DIR = Path("runs") / "local"
DEFAULT_CONFIG = "digits_vit_tiny"


def run_local(repo_root: str | Path, *, config: str = DEFAULT_CONFIG, overrides: list[str] | None = None,
              min_knn_top1: float = 30.0, require_not_worse: bool = True, linear_epochs: int = 100,
              grpc_port: int = GRPC_PORT, http_port: int = HTTP_PORT, metrics_port: int = METRICS_PORT,
              output_dir: str | Path | None = None, pushgateway: str = "", containers: bool = False,
              data_repo: str | None = None, dvc_remote: str = "", data_version: str = "", dvc_endpoint_url: str = "",
              train_subdir: str = "digits/train", val_subdir: str = "digits/val",
              init_from_serving: bool = False) -> dict[str, Any]:
    """Run the whole pipeline locally; returns where each artifact is, the scores and the endpoint.

    Without `data_repo` the data step clones `repo_root` by its path (a git URL like any other) after
    making sure its default data version is recorded and pushed, and pulls it from the local DVC
    remote, exactly as a pod clones the data repository on a cluster. An s3:// `dvc_remote` is read at
    `dvc_endpoint_url` with the AWS_* credentials of this environment, which reach every step (the
    containers too) as the cluster's Secret reaches its pods. With `containers`, every step runs in the
    project image (pipelines/containers.py) instead of this process's environment. With
    `init_from_serving`, pretraining starts from the weights the local Triton serves (as a flywheel run does).
    """
    from kfp import local

    from pipelines.local_oneof import allow_artifact_oneof
    from pipelines.local_server import ensure_local_server
    from pipelines.training import dino_training_pipeline

    repo_root = Path(repo_root).resolve()
    out = Path(output_dir).resolve() if output_dir else repo_root / LOCAL_DIR
    resolved = None
    if data_repo is None:
        from dino_model.versioning.default_data import ensure_default_data

        resolved = ensure_default_data(repo_root)
        data_repo, data_version = str(repo_root), resolved.md5
        dvc_remote = dvc_remote or str(local_remote(repo_root))
    server = ensure_local_server(out / "triton", grpc_port=grpc_port, http_port=http_port,
                                 metrics_port=metrics_port)
    pipeline_root = out / "pipeline_root"
    runner = _container_runner(server, pipeline_root, data_repo, dvc_remote) if containers else \
        local.SubprocessRunner(use_venv=False)
    allow_artifact_oneof()  # the model of the `nodes` branches
    local.init(runner=runner, pipeline_root=str(pipeline_root))
    path = resolve_config_path(config)  # a packaged name travels as a name, a file as its text
    config_name, config_yaml = (config, "") if not Path(config).is_file() else (DEFAULT_CONFIG, path.read_text())
    started = time.time()
    try:
        dino_training_pipeline(
            data_repo=data_repo, data_version=data_version, dvc_remote=dvc_remote,
            dvc_endpoint_url=dvc_endpoint_url, config=config_name,
            config_yaml=config_yaml, overrides=list(overrides or []), train_subdir=train_subdir,
            val_subdir=val_subdir, gpus=0, linear_epochs=linear_epochs, linear_lr=1.0, min_knn_top1=min_knn_top1,
            require_not_worse=require_not_worse, triton_url=server.grpc_url, triton_repository=server.repository,
            triton_flavour="cpu", pushgateway=pushgateway, init_from_serving=init_from_serving,
        )
    except RuntimeError as exc:  # kfp.local reports a failed task this way; its log is above
        raise PipelineError(f"{exc} (the failing task's output is in the run's log; artifacts under "
                            f"{pipeline_root})") from None
    return summarize(pipeline_root, started, server=server,
                     data_version=resolved.to_dict() if resolved is not None else None)


def _container_runner(server, pipeline_root: Path, data_repo: str, dvc_remote: str):
    """DockerRunner with the local data repository and remote (read-only) and the model repository mounted."""
    from dino_model.serving.admin_key import ADMIN_KEY_ENV, find_admin_key
    from pipelines.containers import docker_runner

    local_paths = [Path(p.removeprefix("file://")) for p in (data_repo, dvc_remote)
                   if p and (p.startswith("file://") or "://" not in p)]
    key = find_admin_key(server.repository)
    env = remote_credentials() | ({ADMIN_KEY_ENV: key} if key else {})
    return docker_runner(read_only=local_paths, writable=[Path(server.repository)], owned=[pipeline_root],
                         environment=env)


def remote_credentials() -> dict[str, str]:
    """The DVC remote's S3 credentials from this environment, as the `dvc-remote-credentials` Secret sets
    them in a pod (pipelines/resources.py), plus the region."""
    import os

    from dino_model.versioning.remotes import CREDENTIAL_ENV

    names = [*CREDENTIAL_ENV.values(), "AWS_DEFAULT_REGION"]
    return {name: os.environ[name] for name in names if os.environ.get(name)}


def local_remote(repo_root: Path) -> Path:
    """The folder of the repository's default DVC remote (the local one the embedded run uses)."""
    from dino_model.versioning.remotes import get_remote
    from dino_model.versioning.repo import open_repo

    with open_repo(repo_root) as repo:
        return Path(get_remote(repo, None).path)


def summarize(pipeline_root: Path, started: float, *, server, data_version: dict | None) -> dict[str, Any]:
    """Artifacts written by the run that started at `started`, their scores, and the endpoint."""
    import json

    from dino_model.serving.admin_key import admin_headers_for
    from dino_model.serving.client import EmbeddingClient

    run_dirs = sorted((d for d in pipeline_root.iterdir() if d.is_dir() and d.stat().st_mtime >= started - 1),
                      key=lambda d: d.stat().st_mtime)
    run_dir = run_dirs[-1] if run_dirs else pipeline_root
    wanted = {"checkpoint.pth": "checkpoint.pth", "metrics.jsonl": "metrics.jsonl", "model.onnx": "model.onnx",
              "eval-knn/report_json": "knn.json", "eval-linear/report_json": "linear.json", "maps": "attention.html"}
    artifacts = {name: str(p) for p in sorted(run_dir.rglob("*")) for key, name in wanted.items()
                 if p.is_file() and str(p).endswith(key)}
    scores = {}
    for name in ("knn.json", "linear.json"):
        if name in artifacts:
            scores |= json.loads(Path(artifacts[name]).read_text())["metrics"]
    client = EmbeddingClient(server.grpc_url, DEFAULT_MODEL_NAME, timeout_s=30.0,
                             headers=admin_headers_for(server.repository))
    index = client.call("reading the repository index", client.raw.get_model_repository_index, as_json=True)
    served = index.get("models", [])
    if data_version is None and any(m.get("state") == "READY" for m in served):
        lineage = client.served.contract.lineage
        data_version = {"md5": lineage.get("data_version"), "rev": lineage.get("data_revision")}
    return {
        "data_version": data_version,
        "run_dir": str(run_dir),
        "artifacts": artifacts,
        "scores": {k: scores[k] for k in ("knn_top1", "knn_top5_k20", "linear_top1", "linear_top5") if k in scores},
        "deployed": [m for m in served if m.get("state") == "READY"],
        "endpoint": {"grpc": server.grpc_url, "http": server.http_url, "metrics": server.metrics_url,
                     "model": DEFAULT_MODEL_NAME, "repository": server.repository},
    }
