"""Loading trained weights: this project's checkpoints and the official DINO releases.

Official full checkpoints hold `student` (keys prefixed `module.`) and `teacher` state dicts plus a
pickled `argparse.Namespace`; backbone-only files are plain ViT or ResNet state dicts. Both load
with `weights_only=True` (the Namespace is allow-listed). The head's legacy weight-norm names
`last_layer.weight_g/weight_v` map to the parametrisation names used here.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dino_model.config import ModelConfig, config_from_dict
from dino_model.errors import CheckpointError
from dino_model.models.backbone import build_backbone
from dino_model.models.factory import build_student_teacher
from dino_model.models.multicrop import MultiCropWrapper
from dino_model.runtime.checkpoint import load_checkpoint

logger = logging.getLogger(__name__)

_WN_KEYS = {
    "last_layer.weight_g": "last_layer.parametrizations.weight.original0",
    "last_layer.weight_v": "last_layer.parametrizations.weight.original1",
}
_VIT_BY_DIM = {192: ("vit_tiny", 3), 384: ("vit_small", 6), 768: ("vit_base", 12)}


def to_project_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip DDP's `module.` prefix and rename legacy weight-norm parameters."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        for old, new in _WN_KEYS.items():
            key = key.replace(old, new)
        out[key] = value
    return out


def model_config_of(ckpt: dict[str, Any], path: Path) -> ModelConfig:
    """The ModelConfig a checkpoint was trained with (project config, or official args)."""
    if "config" in ckpt:
        return config_from_dict(ckpt["config"]).model
    args = ckpt.get("args")
    if args is not None:
        return _config_from_official_args(args)
    return infer_backbone_config(ckpt, path)


def load_backbone(
    path: str | Path, *, key: str = "teacher", cfg: ModelConfig | None = None
) -> tuple[nn.Module, ModelConfig]:
    """The backbone of a checkpoint (`key` = teacher or student), in eval mode."""
    path = Path(path)
    ckpt = load_checkpoint(path)
    cfg = cfg or model_config_of(ckpt, path)
    state = ckpt.get(key, ckpt)
    state = to_project_keys(state)
    if any(k.startswith("backbone.") for k in state):
        state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    backbone, _ = build_backbone(cfg, drop_path_rate=0.0)
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(("fc.", "head."))]
    if missing:
        raise CheckpointError(f"{path} lacks backbone weights {missing[:5]} for model.arch={cfg.arch}")
    if unexpected:
        logger.info("ignored %d non-backbone keys in %s (e.g. %s)", len(unexpected), path, unexpected[0])
    return backbone.eval(), cfg


def load_student_teacher(path: str | Path) -> tuple[MultiCropWrapper, MultiCropWrapper, ModelConfig]:
    """Student and teacher (backbone + head) from a full training checkpoint, official or ours."""
    path = Path(path)
    ckpt = load_checkpoint(path)
    if "student" not in ckpt or "teacher" not in ckpt:
        raise CheckpointError(f"{path} is not a full training checkpoint (no student/teacher entries)")
    cfg = model_config_of(ckpt, path)
    student, teacher = build_student_teacher(cfg)
    for model, name in ((student, "student"), (teacher, "teacher")):
        try:
            model.load_state_dict(to_project_keys(ckpt[name]))
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: {name} weights do not fit model {cfg}: {exc}") from exc
    return student, teacher, cfg


def infer_backbone_config(state: dict[str, Any], path: Path) -> ModelConfig:
    """Arch and patch size of a backbone-only state dict, read from the weight shapes."""
    state = to_project_keys(state)
    if "patch_embed.proj.weight" in state:
        dim, _, patch, _ = state["patch_embed.proj.weight"].shape
        if dim not in _VIT_BY_DIM:
            raise CheckpointError(f"{path}: ViT width {dim} matches no known arch; pass a ModelConfig")
        arch, heads = _VIT_BY_DIM[dim]
        depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
        n_tokens = state["pos_embed"].shape[1] - 1
        img = int(round(n_tokens**0.5)) * patch
        return ModelConfig(arch=arch, patch_size=patch, img_size=img, depth=depth, num_heads=heads)
    if "layer4.0.conv1.weight" in state:
        arch = "resnet50" if "layer4.0.conv3.weight" in state else "resnet18"
        return ModelConfig(arch=arch)
    raise CheckpointError(f"{path} is neither a ViT nor a ResNet state dict; pass a ModelConfig")


def _config_from_official_args(args: argparse.Namespace) -> ModelConfig:
    arch = str(getattr(args, "arch", "vit_small")).replace("deit", "vit")
    return ModelConfig(
        arch=arch,
        patch_size=int(getattr(args, "patch_size", 16)),
        out_dim=int(getattr(args, "out_dim", 65536)),
        use_bn_in_head=bool(getattr(args, "use_bn_in_head", False)),
        norm_last_layer=bool(getattr(args, "norm_last_layer", True)),
        drop_path_rate=float(getattr(args, "drop_path_rate", 0.1)),
    )
