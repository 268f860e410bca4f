"""DINO loss against a hand-computed case and a loop-form reference of the official algorithm."""

import math

import pytest
import torch
from fixtures.official_dino import official_loss as reference_loss

from dino_model.loss import DINOLoss


def test_hand_computed_two_globals_k2():
    # B = 1, K = 2, two crops only: pairs (t0, s1) and (t1, s0).
    loss = DINOLoss(2, 2, epochs=1, teacher_temp=1.0, student_temp=1.0)
    student = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])  # s0 = (1/2, 1/2), s1 = (3/4, 1/4)
    teacher = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]])  # t0 = (1/2, 1/2), t1 = (1/4, 3/4)
    # H(t0, s1) = -(1/2 log 3/4 + 1/2 log 1/4); H(t1, s0) = log 2
    expected = (-(0.5 * math.log(0.75) + 0.5 * math.log(0.25)) + math.log(2.0)) / 2
    assert loss(student, teacher, epoch=0).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("ncrops,batch,k", [(2, 3, 5), (4, 2, 7), (10, 4, 16)])
def test_matches_loop_reference(ncrops, batch, k):
    torch.manual_seed(ncrops)
    student = torch.randn(ncrops * batch, k)
    teacher = torch.randn(2 * batch, k)
    loss = DINOLoss(k, ncrops, epochs=1, teacher_temp=0.04)
    loss.center.copy_(torch.randn(1, k) * 0.1)
    expected, n_pairs = reference_loss(student, teacher, loss.center.clone(), ncrops, 0.04)
    assert loss.n_pairs() == n_pairs == 2 * (ncrops - 1)
    assert loss(student, teacher, epoch=0).item() == pytest.approx(expected.item(), rel=1e-5)


def test_eighteen_pairs_for_two_globals_and_eight_locals():
    assert DINOLoss(8, 10, epochs=1).n_pairs() == 18


def test_center_update_is_ema_of_batch_mean_after_the_loss():
    loss = DINOLoss(3, 2, epochs=1, center_momentum=0.9)
    loss.center.fill_(1.0)
    teacher = torch.tensor([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]])
    before, _ = reference_loss(torch.zeros(2, 3), teacher, torch.ones(1, 3), 2, 0.04)
    value = loss(torch.zeros(2, 3), teacher, epoch=0)
    assert value.item() == pytest.approx(before.item(), rel=1e-6)  # the old centre was used
    expected = 0.9 * torch.ones(3) + 0.1 * torch.tensor([2.0, 3.0, 4.0])
    torch.testing.assert_close(loss.center[0], expected)


def test_center_update_in_fp64_sums_in_fp64():
    # the official update (sum, / B, EMA) in fp64: ~1e-16 apart; an fp32 sum was ~1e-8 off
    gen = torch.Generator().manual_seed(0)
    loss = DINOLoss(257, 4, epochs=1).double()
    loss.center.copy_(torch.randn(1, 257, generator=gen, dtype=torch.float64))
    center = loss.center.clone()
    student = torch.randn(4 * 64, 257, generator=gen, dtype=torch.float64)
    teacher = torch.randn(2 * 64, 257, generator=gen, dtype=torch.float64) * 3 + 1
    loss(student, teacher, epoch=0)
    batch_center = torch.sum(teacher, dim=0, keepdim=True) / len(teacher)
    expected = center * 0.9 + batch_center * (1 - 0.9)
    assert loss.center.dtype == torch.float64
    torch.testing.assert_close(loss.center, expected, rtol=0, atol=1e-14)


def test_teacher_temperature_schedule_per_epoch():
    loss = DINOLoss(4, 2, epochs=40, warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=30)
    assert loss.teacher_temp(0) == pytest.approx(0.04)
    assert loss.teacher_temp(29) == pytest.approx(0.07)
    assert loss.teacher_temp(15) == pytest.approx(0.04 + 15 * 0.03 / 29)
    assert loss.teacher_temp(39) == pytest.approx(0.07)


def test_teacher_entropy_is_logged_and_bounded():
    k = 16
    loss = DINOLoss(k, 2, epochs=1, teacher_temp=1.0)
    loss(torch.randn(4, k), torch.zeros(4, k), epoch=0)  # uniform teacher
    assert loss.last_teacher_entropy.item() == pytest.approx(math.log(k), rel=1e-5)


def test_rejects_mismatched_crop_count():
    with pytest.raises(ValueError, match="ncrops"):
        DINOLoss(4, 3, epochs=1)(torch.randn(4, 4), torch.randn(4, 4), epoch=0)
