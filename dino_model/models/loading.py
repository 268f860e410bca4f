"""Loading trained weights: this project's checkpoints and the official DINO releases.

Official full checkpoints hold `student` (keys prefixed `module.`) and `teacher` state dicts plus a
pickled `argparse.Namespace`; backbone-only files are plain ViT or ResNet state dicts. Both load
with `weights_only=True` (the Namespace is allow-listed). The head's legacy weight-norm names
`last_layer.weight_g/weight_v` map to the parametrisation names used here.

`init_student_teacher` starts a new training run from such a file, or from the backbone-only
`.safetensors` file of an export (timm's names, which are ours). Every mismatch with the run's
model (arch, patch size, width, depth, head out_dim, any other shape) is refused before a weight is
copied, naming both values, because a silently partial load would train a different model than the
one asked for. Position embeddings stored for another image size are the one exception: they are
resampled to the run's patch grid with the run's `model.pos_interpolation`, exactly what the model
would do with the stored table at that size.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Any

import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from dino_model.config import ModelConfig, config_from_dict
from dino_model.errors import CheckpointError
from dino_model.models.backbone import build_backbone, interpolate_pos_embed_dino
from dino_model.models.factory import build_student_teacher
from dino_model.models.multicrop import MultiCropWrapper
from dino_model.runtime.checkpoint import load_checkpoint
from dino_model.runtime.digests import file_sha256

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
    state = backbone_state(ckpt, key)
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


def backbone_state(ckpt: dict[str, Any], key: str = "teacher") -> dict[str, torch.Tensor]:
    """The backbone weights of a checkpoint (`ckpt[key]`, or the file itself when it has no such
    entry), with project key names and no `backbone.` prefix."""
    state = to_project_keys(ckpt.get(key, ckpt))
    if any(k.startswith("backbone.") for k in state):
        state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    return state


def is_full_checkpoint(ckpt: dict[str, Any]) -> bool:
    """Whether a checkpoint holds a student and a teacher with their heads (ours or official)."""
    def has_head(state: Any) -> bool:
        return isinstance(state, dict) and any(k.removeprefix("module.").startswith("head.") for k in state)

    return has_head(ckpt.get("student")) and has_head(ckpt.get("teacher"))


def init_student_teacher(path: str | Path, student: nn.Module, teacher: nn.Module, cfg: ModelConfig, *,
                         parts: str = "auto") -> dict[str, Any]:
    """Copy a checkpoint's weights into a new run's student and teacher (MultiCropWrappers), in place.

    parts: `all` (student <- the file's student, teacher <- its teacher, heads included; needs a full
    checkpoint), `backbone` (both backbones <- the file's teacher backbone, or the backbone-only file;
    the heads keep their fresh initialisation) or `auto` (all for a full checkpoint, else backbone).
    Returns the lineage record stored in the run's checkpoints: path, sha256, format, parts and the
    source's epoch and data version where it has them.
    """
    path = Path(path)
    ckpt = read_weights(path)
    full = is_full_checkpoint(ckpt)
    parts = ("all" if full else "backbone") if parts == "auto" else parts
    if parts == "all" and not full:
        raise CheckpointError(f"train.init_parts=all needs a full checkpoint (student and teacher with heads); "
                              f"{path} holds a backbone only: use train.init_parts=backbone or auto")
    if parts not in ("all", "backbone"):
        raise CheckpointError(f"train.init_parts={parts!r} is not one of auto, all, backbone")
    _check_declared_arch(ckpt, cfg, path)
    if parts == "all":
        states = {name: _fitted_full_state(model, to_project_keys(ckpt[name]), cfg, f"{path} ({name})")
                  for name, model in (("student", student), ("teacher", teacher))}
        for name, model in (("student", student), ("teacher", teacher)):
            _load_exactly(model, states[name], f"{path} ({name})")
    else:
        where = f"{path} (teacher backbone)" if "teacher" in ckpt else str(path)
        state = _fitted_backbone_state(student.backbone, backbone_state(ckpt), cfg, where)
        state = {k: v for k, v in state.items() if not k.startswith(_CLASSIFIER_KEYS)}
        for model in (student, teacher):
            _load_exactly(model.backbone, state, where)
    record = {"path": str(path.resolve()), "sha256": file_sha256(path), "parts": parts, "format": _format_of(ckpt)}
    if isinstance(ckpt.get("epoch"), int):
        record["source_epoch"] = ckpt["epoch"]
    if ckpt.get("data_version"):
        record["source_data_version"] = str(ckpt["data_version"])
    return record


def read_weights(path: Path) -> dict[str, Any]:
    """A checkpoint, or the backbone-only `.safetensors` file an export writes (and a Triton version folder
    holds): the flywheel's retraining starts from the served model's weights."""
    if path.suffix != ".safetensors":
        return load_checkpoint(path)
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - any failure to parse means a corrupt file
        raise CheckpointError(f"weights file {path} cannot be read ({type(exc).__name__}: {exc})") from exc


_CLASSIFIER_KEYS = ("head.", "fc.")  # supervised classifiers in backbone files; never part of a DINO backbone


def _format_of(ckpt: dict[str, Any]) -> str:
    if "args" in ckpt:
        return "official"
    return "project" if "config" in ckpt else "state_dict"


def _declared_arch(ckpt: dict[str, Any]) -> str | None:
    """The arch a checkpoint names (our config or the official args), None for a bare state dict."""
    config = ckpt.get("config")
    if isinstance(config, dict) and isinstance(config.get("model"), dict) and config["model"].get("arch"):
        return str(config["model"]["arch"])
    args = ckpt.get("args")
    arch = getattr(args, "arch", None) if args is not None else None
    return str(arch).replace("deit", "vit") if arch else None


def _check_declared_arch(ckpt: dict[str, Any], cfg: ModelConfig, path: Path) -> None:
    declared = _declared_arch(ckpt)
    if declared is not None and declared != cfg.arch:
        raise CheckpointError(f"{path} holds a {declared} (checkpoint model.arch={declared}); this run has "
                              f"model.arch={cfg.arch}: set model.arch={declared} or choose a matching checkpoint")


def _fitted_full_state(model: nn.Module, state: dict[str, torch.Tensor], cfg: ModelConfig,
                       where: str) -> dict[str, torch.Tensor]:
    """A full student/teacher state checked against `model`, its position table resampled if needed."""
    backbone = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    rest = {k: v for k, v in state.items() if not k.startswith("backbone.")}
    backbone = _fitted_backbone_state(model.backbone, backbone, cfg, where)
    out_key = "head.last_layer.parametrizations.weight.original1"
    if out_key in rest and rest[out_key].shape[0] != cfg.out_dim:
        raise CheckpointError(f"{where} has a head with out_dim {rest[out_key].shape[0]}; this run has "
                              f"model.out_dim={cfg.out_dim}: set model.out_dim={rest[out_key].shape[0]}, or "
                              f"train.init_parts=backbone to start the heads afresh")
    return {f"backbone.{k}": v for k, v in backbone.items()} | rest


def _fitted_backbone_state(backbone: nn.Module, state: dict[str, torch.Tensor], cfg: ModelConfig,
                           where: str) -> dict[str, torch.Tensor]:
    """Check a backbone state's kind, patch size, width and depth against `backbone`; resample its position table."""
    own = backbone.state_dict()
    if "patch_embed.proj.weight" not in own:
        if "conv1.weight" not in state:
            raise CheckpointError(f"{where} holds no ResNet weights (no conv1.weight); model.arch={cfg.arch} "
                                  f"needs a ResNet checkpoint")
        return state
    if "patch_embed.proj.weight" not in state:
        raise CheckpointError(f"{where} holds no ViT weights (no patch_embed.proj.weight); model.arch={cfg.arch} "
                              f"needs a ViT checkpoint")
    width, _, patch, _ = state["patch_embed.proj.weight"].shape
    own_width, _, own_patch, _ = own["patch_embed.proj.weight"].shape
    if patch != own_patch:
        raise CheckpointError(f"{where} has patch size {patch}; this run has model.patch_size={own_patch}")
    if width != own_width:
        raise CheckpointError(f"{where} has ViT width (embed dim) {width}; this run's model has {own_width} "
                              f"(model.arch={cfg.arch}, model.embed_dim={cfg.embed_dim})")
    depth, own_depth = _n_blocks(state), _n_blocks(own)
    if depth != own_depth:
        raise CheckpointError(f"{where} has {depth} blocks; this run's model has {own_depth} "
                              f"(model.arch={cfg.arch}, model.depth={cfg.depth})")
    if "pos_embed" in state and state["pos_embed"].shape != own["pos_embed"].shape:
        state = state | {"pos_embed": _resample_pos_embed(state["pos_embed"], own["pos_embed"], backbone, cfg, where)}
    return state


def _n_blocks(state: dict[str, Any]) -> int:
    return len({k.split(".")[1] for k in state if k.startswith("blocks.")})


def _resample_pos_embed(table: torch.Tensor, own: torch.Tensor, backbone: nn.Module, cfg: ModelConfig,
                        where: str) -> torch.Tensor:
    """The stored (1, prefix + N, D) table resampled to the run's square patch grid."""
    prefix = int(getattr(backbone, "num_prefix_tokens", 1))
    n_file, n_own = table.shape[1] - prefix, own.shape[1] - prefix
    side, own_side = math.isqrt(n_file), math.isqrt(n_own)
    if side * side != n_file or own_side * own_side != n_own:
        raise CheckpointError(f"{where} has position embeddings for {n_file} patches and this run for {n_own}; "
                              f"only square grids can be resampled")
    if cfg.pos_interpolation == "dino":
        resampled = interpolate_pos_embed_dino(table, own_side, own_side, prefix)
    else:
        resampled = resample_abs_pos_embed(table, new_size=[own_side, own_side], num_prefix_tokens=prefix)
    logger.info("%s: position embeddings resampled from %dx%d to %dx%d patches (model.pos_interpolation=%s)",
                where, side, side, own_side, own_side, cfg.pos_interpolation)
    return resampled


def _load_exactly(module: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """load_state_dict, refusing any missing, unexpected or differently shaped entry with one readable line."""
    own = module.state_dict()
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
              for k in sorted(own.keys() & state.keys()) if state[k].shape != own[k].shape]
    problems = [f"{label}: {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}"
                for label, items in (("missing", missing), ("unexpected", unexpected),
                                     ("shape (file vs this run)", shapes)) if items]
    if problems:
        raise CheckpointError(f"{where} does not fit this run's model ({'; '.join(problems)}): check the model.* "
                              f"settings (hidden_dim, bottleneck_dim, head_layers, use_bn_in_head, global_pool)")
    module.load_state_dict(state)


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
