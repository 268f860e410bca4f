"""Per-iteration schedules, precomputed as arrays indexed by the global step.

Matches `utils.cosine_scheduler` of the official code: an inclusive linear warm-up (step 0 is
`start_warmup_value`), then a half cosine from `base` towards `final` that never quite reaches it.
The teacher temperature, per epoch, is the loss's own (`dino_model.loss.teacher_temp_schedule`).
"""

import numpy as np


def cosine_schedule(
    base: float,
    final: float,
    epochs: int,
    steps_per_epoch: int,
    *,
    warmup_epochs: int = 0,
    start_warmup_value: float = 0.0,
) -> np.ndarray:
    """Values for each of `epochs * steps_per_epoch` iterations."""
    warmup_steps = warmup_epochs * steps_per_epoch
    warmup = np.linspace(start_warmup_value, base, warmup_steps) if warmup_steps > 0 else np.array([])
    total = epochs * steps_per_epoch
    j = np.arange(total - warmup_steps)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * j / max(len(j), 1)))
    return np.concatenate((warmup, cosine))


def effective_lr(base_lr: float, global_batch: int) -> float:
    """The linear scaling rule: base_lr is the peak lr for a global batch of 256 images."""
    return base_lr * global_batch / 256.0
