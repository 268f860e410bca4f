"""Entry point of each training process, and the launcher that starts one or N of them.

`launch_training` writes the resolved config to output_dir/config.yaml and, for N > 1, runs
`torchrun -m dino_model.train.worker` on it, so every rank reads the same file; a single process
trains in place. Either way the result is read back from the checkpoint and metrics file.

A worker reads its config from a file (`--config`) or from an environment variable holding the YAML
(`--config-env`): a Kubeflow Trainer v2 TrainJob carries its run's config in `spec.trainer.env`, so the
job needs no ConfigMap of its own and no per-job volume in the shared training runtime.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

from dino_model.config import TrainConfig, dump_config, load_config, load_config_text
from dino_model.errors import ConfigError
from dino_model.logs import read_jsonl, setup_logging
from dino_model.runtime.distributed import cleanup, launch

logger = logging.getLogger(__name__)


def launch_training(cfg: TrainConfig, *, nproc: int = 1, resume: bool = False) -> dict[str, Any]:
    """Train with `nproc` processes; returns checkpoint path, final metrics and lineage."""
    out = Path(cfg.train.output_dir)
    if nproc > 1:
        out.mkdir(parents=True, exist_ok=True)
        config_path = out / "config.yaml"
        dump_config(cfg, config_path)
        launch(nproc, ["dino_model.train.worker", "--config", str(config_path), *(["--resume"] if resume else [])])
    else:
        from dino_model.train.loop import fit

        fit(cfg, resume=resume)
    metrics = read_jsonl(out / "metrics.jsonl")
    return {
        "checkpoint": str(out / "checkpoint.pth"),
        "output_dir": str(out),
        "final_metrics": metrics[-1] if metrics else {},
        "data_version": cfg.data.version,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="one DINO training process (run under torchrun)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="a TrainConfig YAML file")
    source.add_argument("--config-env", metavar="NAME", help="an environment variable holding the TrainConfig YAML")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    setup_logging(rank=int(os.environ.get("RANK", 0)))
    from dino_model.train.loop import fit

    try:
        fit(worker_config(args.config, args.config_env), resume=args.resume)
    finally:
        cleanup()


def worker_config(path: str | None, env_name: str | None) -> TrainConfig:
    """The config from the file `path`, else from the YAML in the environment variable `env_name`."""
    if path is not None:
        return load_config(path)
    text = os.environ.get(env_name or "", "")
    if not text.strip():
        raise ConfigError(f"--config-env {env_name}: the environment variable is unset or empty; it must hold "
                          "the TrainConfig YAML (the TrainJob's spec.trainer.env sets it)")
    return load_config_text(text)


if __name__ == "__main__":
    main()
