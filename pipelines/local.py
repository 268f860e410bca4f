"""The main job on one machine: the training pipeline through kfp.local, served by a local Triton.

Same pipeline as on the cluster, with embedded defaults: the digits data set versioned by DVC in
this repository with a local remote, the tiny ViT config, CPU, and a local tritonserver that keeps
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

logger = logging.getLogger(__name__)

LOCAL_DIR = Path("runs") / "local"
DEFAULT_CONFIG = "digits_vit_tiny"


def run_local(repo_root: str | Path, *, config: str = DEFAULT_CONFIG, overrides: list[str] | None = None,
              min_knn_top1: float = 30.0, require_not_worse: bool = True, linear_epochs: int = 100,
              grpc_port: int = 8001, http_port: int = 8000, metrics_port: int = 8002,
              output_dir: str | Path | None = None) -> dict[str, Any]:
    """Run the whole pipeline locally; returns where each artifact is, the scores and the endpoint."""
    from kfp import local

    from dino_model.serving.local_server import ensure_local_server
    from dino_model.versioning.default_data import ensure_default_data
    from pipelines.training import dino_training_pipeline

    repo_root = Path(repo_root).resolve()
    out = Path(output_dir).resolve() if output_dir else repo_root / LOCAL_DIR
    version = ensure_default_data(repo_root)
    server = ensure_local_server(out / "triton", grpc_port=grpc_port, http_port=http_port,
                                 metrics_port=metrics_port)
    pipeline_root = out / "pipeline_root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))
    started = time.time()
    try:
        dino_training_pipeline(
            repo_root=str(repo_root), data_version=version.md5, config_yaml=resolve_config_path(config).read_text(),
            overrides=list(overrides or []), gpus=0, linear_epochs=linear_epochs, linear_lr=1.0,
            min_knn_top1=min_knn_top1,
            require_not_worse=require_not_worse, triton_url=server.grpc_url, triton_repository=server.repository,
            triton_flavour="cpu",
        )
    except RuntimeError as exc:  # kfp.local reports a failed task this way; its log is above
        raise PipelineError(f"{exc} (task logs above; artifacts under {pipeline_root})") from None
    return summarize(pipeline_root, started, server=server, data_version=version.to_dict())


def summarize(pipeline_root: Path, started: float, *, server, data_version: dict) -> dict[str, Any]:
    """Artifacts written by the run that started at `started`, their scores, and the endpoint."""
    import json

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
    client = EmbeddingClient(server.grpc_url, "dino", timeout_s=30.0)
    served = client.raw.get_model_repository_index(as_json=True).get("models", [])
    return {
        "data_version": data_version,
        "run_dir": str(run_dir),
        "artifacts": artifacts,
        "scores": {k: scores[k] for k in ("knn_top1", "knn_top5_k20", "linear_top1", "linear_top5") if k in scores},
        "deployed": [m for m in served if m.get("state") == "READY"],
        "endpoint": {"grpc": server.grpc_url, "http": server.http_url, "metrics": server.metrics_url,
                     "model": "dino", "repository": server.repository},
    }
