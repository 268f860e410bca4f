"""Signals that make collapse and divergence visible, per the DINO paper's Fig. 7.

Teacher entropy near 0 means one prototype dominates; near log(K) means a uniform output. The
KL between teacher and student is the loss minus the teacher entropy (each teacher view is paired
with the same number of student views), so it costs nothing extra to log.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from dino_model.config import MonitorConfig
from dino_model.errors import TrainingDivergedError
from dino_model.runtime.distributed import all_reduce_sum


def check_finite(loss: torch.Tensor, *, epoch: int, step: int, checkpoint: str) -> None:
    """Raise TrainingDivergedError on every process if any process saw a NaN or infinite loss."""
    bad = torch.tensor([0.0 if torch.isfinite(loss.detach()).all() else 1.0], device=loss.device)
    if all_reduce_sum(bad).item() > 0:
        raise TrainingDivergedError(
            f"loss became {loss.item()} at epoch {epoch}, step {step}; {_next_step(checkpoint)}")


def _next_step(checkpoint: str) -> str:
    """What is left and how to go on: resume from the last good checkpoint, or start again without one."""
    if Path(checkpoint).is_file():
        return (f"the last good checkpoint is kept at {checkpoint}. Lower optim.base_lr or set optim.clip_grad, "
                f"then rerun with --resume.")
    return (f"no checkpoint was written yet (none at {checkpoint}). Lower optim.base_lr or set optim.clip_grad, "
            f"then rerun from the start.")


def entropy_bounds(out_dim: int, cfg: MonitorConfig) -> tuple[float, float]:
    """(low, high) teacher-entropy bounds in nats outside which the run counts as collapsed."""
    max_entropy = math.log(out_dim)
    return cfg.entropy_min_frac * max_entropy, cfg.entropy_max_frac * max_entropy


def is_collapsed(entropy: float, out_dim: int, cfg: MonitorConfig) -> bool:
    low, high = entropy_bounds(out_dim, cfg)
    return not low <= entropy <= high
