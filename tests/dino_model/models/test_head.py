"""DINO head: shapes, parameter count, normalisation and the frozen weight norm."""

import torch

from dino_model.models.head import DINOHead


def test_official_parameter_count_for_vit_small_width():
    head = DINOHead(384, 65536)
    assert sum(p.numel() for p in head.parameters()) == 22_352_128
    assert sum(p.numel() for p in head.parameters() if p.requires_grad) == 22_286_592


def test_logits_are_cosine_similarities_when_norm_is_frozen():
    head = DINOHead(8, 32, hidden_dim=16, bottleneck_dim=4)
    x = torch.randn(5, 8)
    z = torch.nn.functional.normalize(head.mlp(x), dim=-1)
    w = head.last_layer.weight
    torch.testing.assert_close(w.norm(dim=1), torch.ones(32))
    torch.testing.assert_close(head(x), z @ w.T)
    assert head(x).abs().max() <= 1.0 + 1e-6


def test_norm_last_layer_false_makes_g_trainable():
    head = DINOHead(8, 32, norm_last_layer=False, hidden_dim=16, bottleneck_dim=4)
    assert head.last_layer.parametrizations.weight.original0.requires_grad


def test_bn_variant_and_one_layer():
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in DINOHead(8, 4, use_bn=True).modules())
    assert isinstance(DINOHead(8, 4, nlayers=1, bottleneck_dim=3).mlp, torch.nn.Linear)
