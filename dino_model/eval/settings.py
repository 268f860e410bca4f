"""What an evaluation runs with, readable without importing torch (the CLI builds its flags from it).

The config a checkpoint is evaluated with is layered, later wins: the config saved in the checkpoint
(what the model was trained with, so a 32-px model is evaluated at 32 px), then explicit YAML files,
then `a.b=value` overrides. A checkpoint without a saved config (official DINO weights) starts from
the defaults. The linear probe's settings and the attention maps' defaults live here too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from dino_model.config import TrainConfig, load_config_text, pipeline_config, resolve_config_path
from dino_model.errors import ConfigError

ATTENTION_IMAGE_SIZE = (480, 480)  # the official visualize_attention.py resize
ATTENTION_THRESHOLD = 0.6  # share of each head's attention mass kept as a mask (the paper's figures)


@dataclass
class LinearProbeConfig:
    n_last_blocks: Optional[int] = None  # None: 4, or 1 for ViT-B widths (>= 768); capped at the depth
    avgpool_patchtokens: Optional[bool] = None  # None: only for ViT-B widths, as the README advises
    epochs: int = 100
    lr: float = 0.001  # per 256 images; scaled by batch_size / 256
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 0.0
    augment: bool = True  # random-resized crop + flip each epoch; False caches centre-crop features once
    val_freq: int = 1
    seed: int = 0


def saved_config(checkpoint: str | Path) -> dict[str, Any] | None:
    """The `config` dict a checkpoint of this project holds; None for official DINO weights."""
    from dino_model.runtime.checkpoint import load_checkpoint

    config = load_checkpoint(checkpoint).get("config")
    return dict(config) if isinstance(config, dict) else None


def checkpoint_config(checkpoint: str | Path, files: Sequence[str | Path] = (),
                      overrides: Sequence[str] = ()) -> TrainConfig:
    """The checkpoint's saved config, then `files` (YAML paths or packaged names, later wins), then overrides."""
    texts = [resolve_config_path(f).read_text() for f in files]
    return layered_config(saved_config(checkpoint) or {}, texts, overrides)


def pipeline_eval_config(checkpoint: str | Path, config: str, config_yaml: str,
                         overrides: Sequence[str]) -> TrainConfig:
    """The config a pipeline evaluation component runs with: the checkpoint's saved config plus the run's
    overrides (so an `eval.*` override applies); the run's `config_yaml` or packaged `config` only for a
    checkpoint that saved none."""
    saved = saved_config(checkpoint)
    if saved is None:
        return pipeline_config(config, config_yaml, overrides)
    return layered_config(saved, (), overrides)


def layered_config(base: dict[str, Any], texts: Sequence[str], overrides: Sequence[str]) -> TrainConfig:
    """`base` (a `TrainConfig.to_dict()`), YAML documents over it, then overrides; validated."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        layers = [OmegaConf.create(base), *(OmegaConf.create(t) if t.strip() else OmegaConf.create({}) for t in texts)]
        merged = OmegaConf.to_yaml(OmegaConf.merge(*layers))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"bad configuration: {str(exc).splitlines()[0]}") from None
    return load_config_text(merged, overrides)
