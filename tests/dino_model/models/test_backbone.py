"""Backbones: timm ViTs with the official position-embedding interpolation, and ResNets."""

import math

import pytest
import torch
import torch.nn.functional as F

from dino_model.config import ModelConfig
from dino_model.errors import ConfigError
from dino_model.models.backbone import build_backbone, intermediate_tokens, interpolate_pos_embed_dino

TINY = ModelConfig(arch="vit_tiny", patch_size=4, img_size=32, depth=2, embed_dim=64, num_heads=2)


def test_vit_small_matches_official_parameter_count():
    model, dim = build_backbone(ModelConfig(arch="vit_small"))
    assert dim == 384
    assert sum(p.numel() for p in model.parameters()) == 21_665_664


@pytest.mark.parametrize("size", [(32, 32), (16, 16), (16, 24)])
def test_any_crop_size_gives_cls_features(size):
    model, dim = build_backbone(TINY)
    assert model(torch.randn(2, 3, *size)).shape == (2, dim)


def test_dino_interpolation_matches_the_official_formula():
    torch.manual_seed(0)
    table = torch.randn(1, 1 + 8 * 8, 6)
    out = interpolate_pos_embed_dino(table, 4, 6)
    grid = table[:, 1:].reshape(1, 8, 8, 6).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, scale_factor=(4.1 / 8, 6.1 / 8), mode="bicubic", align_corners=False)
    torch.testing.assert_close(out[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, 24, 6))
    torch.testing.assert_close(out[:, :1], table[:, :1])
    assert interpolate_pos_embed_dino(table, 8, 8) is table


def test_dino_interpolation_runs_in_fp64_for_an_fp64_table():
    # fp64 runs resample in fp64: the official formula in fp64 agrees to ~1e-15; through fp32 the
    # error was ~1e-7
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(1, 1 + 8 * 8, 6, generator=gen, dtype=torch.float64)
    out = interpolate_pos_embed_dino(table, 5, 7)
    assert out.dtype == torch.float64
    grid = table[:, 1:].reshape(1, 8, 8, 6).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, scale_factor=(5.1 / 8, 7.1 / 8), mode="bicubic", align_corners=False)
    torch.testing.assert_close(out[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, 35, 6), rtol=0, atol=1e-13)


def test_fp64_vit_off_the_training_size_matches_its_fp64_interpolation():
    model, _ = build_backbone(TINY)
    model.double().eval()
    x = torch.randn(2, 3, 16, 24, dtype=torch.float64)
    pos = interpolate_pos_embed_dino(model.pos_embed, 4, 6)
    grid = model.pos_embed[:, 1:].reshape(1, 8, 8, -1).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, scale_factor=(4.1 / 8, 6.1 / 8), mode="bicubic", align_corners=False)
    torch.testing.assert_close(pos[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, 24, -1), rtol=0, atol=1e-13)
    assert model(x).dtype == torch.float64


def test_dino_and_timm_interpolation_differ_off_the_training_size():
    dino, _ = build_backbone(TINY)
    timm_cfg = ModelConfig(**{**TINY.__dict__, "pos_interpolation": "timm"})
    timm_model, _ = build_backbone(timm_cfg)
    timm_model.load_state_dict(dino.state_dict())
    dino.eval(), timm_model.eval()
    x32, x16 = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(dino(x32), timm_model(x32))
    assert not torch.allclose(dino(x16), timm_model(x16), atol=1e-4)


def test_intermediate_tokens_last_block_cls_is_the_forward_output():
    model, _ = build_backbone(TINY)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    tokens = intermediate_tokens(model, x, n=2)
    assert [t.shape for t in tokens] == [(2, 65, 64)] * 2
    torch.testing.assert_close(tokens[-1][:, 0], model(x))


def test_resnet_and_unknown_arch():
    model, dim = build_backbone(ModelConfig(arch="resnet18"))
    assert dim == 512 and model(torch.randn(2, 3, 32, 32)).shape == (2, 512)
    with pytest.raises(ConfigError, match="model.arch"):
        build_backbone(ModelConfig(arch="vit_huge"))
    assert math.isfinite(float(dim))
