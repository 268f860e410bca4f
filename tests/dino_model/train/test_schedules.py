"""Schedules at chosen iterations, against the official cosine_scheduler's definition."""

import math

import numpy as np
import pytest

from dino_model.train.schedules import cosine_schedule, effective_lr


def test_warmup_is_inclusive_linear_and_starts_at_zero():
    s = cosine_schedule(1.0, 0.0, epochs=4, steps_per_epoch=5, warmup_epochs=1)
    assert len(s) == 20
    np.testing.assert_allclose(s[:5], [0.0, 0.25, 0.5, 0.75, 1.0])


def test_cosine_part_at_chosen_steps():
    base, final, total, warm = 0.002, 1e-6, 1251 * 100, 1251 * 10
    s = cosine_schedule(base, final, epochs=100, steps_per_epoch=1251, warmup_epochs=10)
    assert s[warm] == pytest.approx(base)
    j = 20_000
    expected = final + 0.5 * (base - final) * (1 + math.cos(math.pi * j / (total - warm)))
    assert s[warm + j] == pytest.approx(expected)
    assert s[-1] == pytest.approx(final, abs=1e-9) and s[-1] > final


def test_weight_decay_and_momentum_rise_along_a_cosine():
    wd = cosine_schedule(0.04, 0.4, epochs=10, steps_per_epoch=10)
    assert wd[0] == pytest.approx(0.04) and wd[50] == pytest.approx(0.22) and wd[-1] == pytest.approx(0.4, abs=1e-3)
    m = cosine_schedule(0.996, 1.0, epochs=10, steps_per_epoch=10)
    assert m[0] == pytest.approx(0.996) and m[50] == pytest.approx(0.998) and np.all(np.diff(m) >= 0)


def test_lr_scaling_rule():
    assert effective_lr(5e-4, 1024) == pytest.approx(0.002)
