"""What a training run is made of: the models, the loss, the optimiser and the schedules, in one object.

The loop (loop.py) steps it, and resume.py saves it to a checkpoint and restores it; both take it
from here so that neither has to import the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dino_model.config import TrainConfig
from dino_model.loss import DINOLoss
from dino_model.runtime.distributed import DistInfo


@dataclass
class Schedules:
    lr: np.ndarray
    wd: np.ndarray
    momentum: np.ndarray


@dataclass
class Trainer:
    cfg: TrainConfig
    dist: DistInfo
    student: nn.Module  # DDP-wrapped when distributed
    teacher: nn.Module
    loss: DINOLoss
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    schedules: Schedules
    steps_per_epoch: int
    init: dict[str, Any] = field(default_factory=dict)  # where the initial weights came from ({} = random)

    @property
    def student_module(self) -> nn.Module:
        return unwrap(self.student)

    @property
    def teacher_module(self) -> nn.Module:
        return unwrap(self.teacher)


def unwrap(model: nn.Module) -> nn.Module:
    """The module itself, out of torch.compile's and DistributedDataParallel's wrappers."""
    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper
    return model.module if isinstance(model, DistributedDataParallel) else model
