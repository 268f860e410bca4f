"""The teacher: a gradient-free exponential moving average of the student.

Only parameters are averaged, as in the official code; buffers (BatchNorm statistics) are the
teacher's own. The momentum follows a cosine from `momentum_teacher` to 1 (see schedules.py).
"""

import copy

import torch
from torch import nn


def make_teacher(student: nn.Module, teacher: nn.Module | None = None) -> nn.Module:
    """A copy of the student (or `teacher` loaded with its weights) with gradients disabled.

    Pass `teacher` when it must differ in construction, e.g. without drop path.
    """
    if teacher is None:
        teacher = copy.deepcopy(student)
    else:
        teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(student: nn.Module, teacher: nn.Module, momentum: float) -> None:
    """theta_t <- m * theta_t + (1 - m) * theta_s for every parameter pair, in place."""
    s_params = [p.detach() for p in student.parameters()]
    t_params = list(teacher.parameters())
    if len(s_params) != len(t_params):
        raise ValueError(f"student has {len(s_params)} parameters, teacher {len(t_params)}")
    torch._foreach_lerp_(t_params, s_params, 1.0 - momentum)  # one pass: t + (1 - m)(s - t)
