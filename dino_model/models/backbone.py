"""Backbones from timm: ViT tiny/small/base with any patch size, and ResNets.

timm's ViT has the official DINO parameter names and layout (Caron et al., ICCV 2021, Sec. 4), so
official weights load strictly. It resamples position embeddings by target size with antialiasing;
the official code uses `scale_factor=(n + 0.1) / sqrt(N)` without antialiasing, which
`model.pos_interpolation="dino"` (the default) reproduces. At the training resolution both
return the stored table unchanged.
"""

from __future__ import annotations

import math

import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from dino_model.config import ModelConfig
from dino_model.errors import ConfigError

TIMM_NAMES = {
    "vit_tiny": "vit_tiny_patch16_224",
    "vit_small": "vit_small_patch16_224",
    "vit_base": "vit_base_patch16_224",
    "resnet18": "resnet18",
    "resnet50": "resnet50",
}


class DinoVisionTransformer(VisionTransformer):
    """timm's ViT with the official DINO position-embedding interpolation."""

    def _pos_embed(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        pos = interpolate_pos_embed_dino(self.pos_embed, h, w, self.num_prefix_tokens)
        x = torch.cat([self.cls_token.expand(b, -1, -1), x.reshape(b, h * w, c)], dim=1)
        return self.pos_drop(x + pos)


def interpolate_pos_embed_dino(pos_embed: Tensor, h: int, w: int, n_prefix: int = 1) -> Tensor:
    """Resample a (1, n_prefix + N, D) table to an h x w patch grid as the official code does."""
    n = pos_embed.shape[1] - n_prefix
    if n == h * w and h == w:
        return pos_embed
    side = int(math.sqrt(n))
    prefix, grid = pos_embed[:, :n_prefix], pos_embed[:, n_prefix:]
    dim = grid.shape[-1]
    grid = grid.reshape(1, side, side, dim).permute(0, 3, 1, 2)
    # the table's own dtype from fp32 up (fp64 stays fp64); bf16 / fp16 tables are resampled in fp32
    work_dtype = torch.promote_types(pos_embed.dtype, torch.float32)
    grid = F.interpolate(
        grid.to(work_dtype),
        scale_factor=((h + 0.1) / side, (w + 0.1) / side),
        mode="bicubic",
        align_corners=False,
    ).to(pos_embed.dtype)
    if grid.shape[-2:] != (h, w):
        raise RuntimeError(f"interpolated grid {tuple(grid.shape[-2:])} != ({h}, {w})")
    return torch.cat([prefix, grid.permute(0, 2, 3, 1).reshape(1, h * w, dim)], dim=1)


def timm_spec(cfg: ModelConfig) -> tuple[str, dict]:
    """The timm model name and `create_model` keyword arguments of the backbone of `cfg` (no training-only ones)."""
    if cfg.arch not in TIMM_NAMES:
        raise ConfigError(f"model.arch={cfg.arch!r} is not one of {', '.join(TIMM_NAMES)}")
    kwargs: dict = {"num_classes": 0}
    if is_vit(cfg):
        kwargs |= {"img_size": cfg.img_size, "patch_size": cfg.patch_size, "global_pool": cfg.global_pool,
                   "dynamic_img_size": True}
        overrides = {"depth": cfg.depth, "embed_dim": cfg.embed_dim, "num_heads": cfg.num_heads}
        kwargs |= {k: v for k, v in overrides.items() if v is not None}
    return TIMM_NAMES[cfg.arch], kwargs


def build_backbone(cfg: ModelConfig, *, drop_path_rate: float | None = None) -> tuple[nn.Module, int]:
    """A backbone returning (B, D) features (ViT: CLS token after the final norm) and D."""
    name, kwargs = timm_spec(cfg)
    rate = cfg.drop_path_rate if drop_path_rate is None else drop_path_rate
    model = timm.create_model(name, pretrained=False, drop_path_rate=rate, **kwargs)
    if is_vit(cfg) and cfg.pos_interpolation == "dino":
        model.__class__ = DinoVisionTransformer
    return model, model.num_features


def is_vit(cfg: ModelConfig) -> bool:
    return cfg.arch.startswith("vit")


def intermediate_tokens(model: nn.Module, x: Tensor, n: int = 1) -> list[Tensor]:
    """Full token sequences (B, 1 + N, D) of the last n blocks, each through the final norm.

    The official `get_intermediate_layers`; CLS is row 0.
    """
    if not isinstance(model, VisionTransformer):
        raise ConfigError("intermediate tokens need a ViT backbone (model.arch=vit_*)")
    outs = model.forward_intermediates(
        x, indices=n, norm=True, output_fmt="NLC", return_prefix_tokens=True, intermediates_only=True
    )
    return [torch.cat([prefix, patches], dim=1) for patches, prefix in outs]


def patch_grid(model: nn.Module, height: int, width: int) -> tuple[int, int]:
    """The (h, w) patch grid a ViT produces for an input of height x width pixels."""
    ph, pw = model.patch_embed.patch_size
    return height // ph, width // pw
