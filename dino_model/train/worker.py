"""Entry point of each training process, and the launcher that starts one or N of them.

`launch_training` writes the resolved config to output_dir/config.yaml and, for N > 1, runs
`torchrun -m dino_model.train.worker` on it, so every rank reads the same file; a single process
trains in place. Either way the result is read back from the checkpoint and metrics file.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

from dino_model.config import TrainConfig, dump_config, load_config
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
    parser.add_argument("--config", required=True)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    setup_logging(rank=int(os.environ.get("RANK", 0)))
    from dino_model.train.loop import fit

    try:
        fit(load_config(args.config), resume=args.resume)
    finally:
        cleanup()


if __name__ == "__main__":
    main()
