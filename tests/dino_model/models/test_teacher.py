"""EMA teacher update against the formula, and gradient isolation."""

import torch
from torch import nn

from dino_model.models.teacher import ema_update, make_teacher


def test_ema_update_formula_and_buffers_untouched():
    student = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    teacher = make_teacher(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    student[1].running_mean.fill_(5.0)
    before = [p.clone() for p in teacher.parameters()]
    ema_update(student, teacher, 0.9)
    for t_new, t_old, s in zip(teacher.parameters(), before, student.parameters(), strict=True):
        torch.testing.assert_close(t_new, 0.9 * t_old + 0.1 * s)
    assert torch.all(teacher[1].running_mean == 0)
    assert not any(p.requires_grad for p in teacher.parameters())


def test_momentum_one_keeps_the_teacher():
    student = nn.Linear(3, 2)
    teacher = make_teacher(student)
    before = teacher.weight.clone()
    with torch.no_grad():
        student.weight.add_(3.0)
    ema_update(student, teacher, 1.0)
    torch.testing.assert_close(teacher.weight, before)
