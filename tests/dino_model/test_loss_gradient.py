"""The DINO loss's hand-written student gradient against autograd through the official loop form."""

import pytest
import torch
from fixtures.official_dino import official_loss

from dino_model.loss import DINOLoss, _StudentCrossEntropy


def _case(ncrops: int, batch: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(ncrops * batch, k, generator=g, dtype=torch.float64)
    teacher = torch.randn(2 * batch, k, generator=g, dtype=torch.float64)
    return student, teacher, torch.randn(1, k, generator=g, dtype=torch.float64) * 0.1


@pytest.mark.parametrize(("ncrops", "batch", "k"), [(2, 3, 5), (4, 2, 7), (8, 4, 33)])
def test_gradient_equals_autograd_through_the_official_form(ncrops: int, batch: int, k: int) -> None:
    student, teacher, center = _case(ncrops, batch, k, seed=ncrops)
    loss = DINOLoss(k, ncrops, epochs=1, teacher_temp=0.04).double()
    loss.center.copy_(center)
    s = student.clone().requires_grad_()
    (grad,) = torch.autograd.grad(loss(s, teacher, epoch=0), s)
    s_ref = student.clone().requires_grad_()
    (expected,) = torch.autograd.grad(official_loss(s_ref, teacher, center, ncrops, 0.04)[0], s_ref)
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)


def test_gradcheck_of_the_student_cross_entropy() -> None:
    student, teacher, _ = _case(4, 2, 6, seed=1)
    p_t = teacher.softmax(dim=-1).view(2, 2, 6)
    s = student.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: _StudentCrossEntropy.apply(x, p_t, 0.1, 4), (s,))


def test_bf16_logits_get_a_bf16_gradient_within_bf16_rounding() -> None:
    student, teacher, center = _case(6, 4, 512, seed=3)
    loss = DINOLoss(512, 6, epochs=1, teacher_temp=0.04)
    loss.center.copy_(center.float())
    s = student.to(torch.bfloat16).requires_grad_()
    value = loss(s, teacher.to(torch.bfloat16), epoch=0)
    (grad,) = torch.autograd.grad(value, s)
    assert grad.dtype == torch.bfloat16
    s_ref = s.detach().double().requires_grad_()  # the same rounded inputs, exact arithmetic
    ref, _ = official_loss(s_ref, teacher.to(torch.bfloat16).double(), center.float().double(), 6, 0.04)
    (expected,) = torch.autograd.grad(ref, s_ref)
    assert value.item() == pytest.approx(ref.item(), rel=1e-5)  # the forward is fp32
    assert float((grad.double() - expected).norm() / expected.norm()) < 4e-3  # one bf16 rounding: 2^-8


def test_a_second_backward_through_a_kept_graph_gives_the_same_gradient() -> None:
    student, teacher, _ = _case(4, 2, 9, seed=2)
    loss = DINOLoss(9, 4, epochs=1).double()
    s = student.requires_grad_()
    value = loss(s, teacher, epoch=0)
    (first,) = torch.autograd.grad(value, s, retain_graph=True)
    (second,) = torch.autograd.grad(value, s)
    torch.testing.assert_close(first, second, rtol=0, atol=0)  # the saved tensors are not overwritten
