"""Parameter groups, per-parameter clipping and the last-layer freeze, as the official code."""

import torch

from dino_model.config import ModelConfig
from dino_model.models.factory import build_student_teacher
from dino_model.train.optim import cancel_last_layer_gradients, clip_gradients, param_groups

TINY = ModelConfig(arch="vit_tiny", patch_size=4, img_size=32, depth=1, embed_dim=32, num_heads=2, out_dim=16,
                   hidden_dim=16, bottleneck_dim=8)


def _names(model, group):
    ids = {id(p) for p in group["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_cls_token_and_pos_embed_are_regularised_biases_and_norms_not():
    student, _ = build_student_teacher(TINY)
    reg, noreg = param_groups(student)
    reg_names, noreg_names = _names(student, reg), _names(student, noreg)
    assert {"backbone.cls_token", "backbone.pos_embed"} <= reg_names
    assert "head.last_layer.parametrizations.weight.original1" in reg_names
    assert all(n.endswith(".bias") or "norm" in n for n in noreg_names)
    assert "head.last_layer.parametrizations.weight.original0" not in reg_names | noreg_names  # frozen g
    assert noreg["weight_decay"] == 0.0


def test_clipping_is_per_parameter():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    a.grad, b.grad = torch.tensor([3.0, 4.0]), torch.tensor([0.3, 0.4])
    model = torch.nn.Module()
    model.a, model.b = a, b
    clip_gradients(model, 1.0)
    torch.testing.assert_close(a.grad, torch.tensor([0.6, 0.8]), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(b.grad, torch.tensor([0.3, 0.4]))


def test_last_layer_gradients_cancelled_only_in_frozen_epochs():
    student, _ = build_student_teacher(TINY)
    student(torch.randn(2, 3, 32, 32)).sum().backward()
    cancel_last_layer_gradients(student, epoch=1, freeze_epochs=1)
    assert student.head.last_layer.parametrizations.weight.original1.grad is not None
    cancel_last_layer_gradients(student, epoch=0, freeze_epochs=1)
    assert student.head.last_layer.parametrizations.weight.original1.grad is None
    assert student.backbone.cls_token.grad is not None
