"""`dino-mlops export --format safetensors` end to end: checkpoint -> timm weights -> reload check -> model card.

Users outside this project load backbones with timm (or torch.hub), not with our training code.
Our ViT is timm's `VisionTransformer` built by `timm.create_model(TIMM_NAMES[arch], ...)`; the only
change is the class swap for DINO's position-embedding interpolation, which returns the stored table
unchanged at the trained grid. So the same name and keyword arguments, minus the training-only ones,
rebuild it in plain timm, with equal outputs at the trained resolution. `dynamic_img_size=True` is
kept, as in training, so other resolutions work; there timm resamples the table with antialiased
bicubic instead of DINO's `scale_factor=(n + 0.1) / sqrt(N)`, which differs slightly. The file is
written, reloaded into plain timm and compared with our backbone before it is kept.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dino_model.config import ModelConfig, config_from_dict
from dino_model.errors import ExportError
from dino_model.export.export_run import build_contract
from dino_model.export.lineage import file_sha256
from dino_model.export.model_card import render_card
from dino_model.export.options import ExportOptions, onnx_only_set
from dino_model.export.safetensors import (
    CHECKPOINT_SHA256,
    SUFFIX,
    TIMM_KWARGS,
    TIMM_NAME,
    load_timm_backbone,
    save_backbone,
)
from dino_model.models.backbone import is_vit, timm_spec
from dino_model.models.loading import load_backbone
from dino_model.runtime.checkpoint import load_checkpoint

logger = logging.getLogger(__name__)

RELOAD_TOLERANCE = 1e-5  # the same weights and operations: measured 0.0 on the test model
RELOAD_IMAGES = 4
# contract keys worth recording beside the weights (the rest describe the ONNX graph's outputs)
CONTRACT_KEYS = ("dino.arch", "dino.image_size", "dino.resize_size", "dino.interpolation", "dino.patch_size",
                 "dino.embed_dim", "dino.mean", "dino.std", "data_version", "data_revision", "code_revision",
                 "metrics", "checkpoint", "init_weights", "init_sha256")
POS_INTERPOLATION = "dino.pos_interpolation"


def export_safetensors(checkpoint: str | Path, output: str | Path, options: ExportOptions | None = None
                       ) -> dict[str, Any]:
    """Write the teacher backbone of `checkpoint` to `output` (.safetensors) and `<stem>.md`; returns a summary."""
    opts = options or ExportOptions()
    output = Path(output)
    if output.suffix != SUFFIX:
        raise ExportError(f"output {output} must end in {SUFFIX}")
    onnx_only = onnx_only_set(opts)
    if onnx_only:
        raise ExportError(f"{', '.join(onnx_only)} only apply to the ONNX export, not to safetensors")
    ckpt = load_checkpoint(checkpoint)
    train_cfg = config_from_dict(ckpt["config"]) if "config" in ckpt else None
    data_version = opts.data_version or str(ckpt.get("data_version", ""))
    init = ckpt.get("init")
    del ckpt
    backbone, model_cfg = load_backbone(checkpoint)
    contract = build_contract(backbone, model_cfg, train_cfg, opts, checkpoint=checkpoint, data_version=data_version,
                              init=init)
    metadata = export_metadata(model_cfg, contract.to_properties(), checkpoint_sha256=file_sha256(checkpoint))
    save_backbone(backbone, output, metadata)
    try:
        diffs = check_reload(backbone, output, model_cfg, contract.image_size)
    except Exception:
        output.unlink(missing_ok=True)
        raise
    sha256 = file_sha256(output)
    card = output.with_suffix(".md")
    card.write_text(render_card(metadata, weights=output.name, sha256=sha256))
    logger.info("wrote %s (%s) and its model card %s", output, metadata[TIMM_NAME], card)
    return {"path": str(output), "sha256": sha256, "bytes": output.stat().st_size, "card": str(card),
            "metadata": metadata, "reload_max_abs_diff": diffs}


def export_metadata(cfg: ModelConfig, properties: dict[str, str], *, checkpoint_sha256: str) -> dict[str, str]:
    """The file's string metadata: how timm rebuilds it, how images are prepared, where it came from."""
    name, kwargs = timm_spec(cfg)
    metadata = {TIMM_NAME: name, TIMM_KWARGS: json.dumps(kwargs, sort_keys=True)}
    metadata |= {key: properties[key] for key in CONTRACT_KEYS if key in properties}
    if is_vit(cfg):
        metadata[POS_INTERPOLATION] = cfg.pos_interpolation
    metadata[CHECKPOINT_SHA256] = checkpoint_sha256
    return metadata


def check_reload(backbone: nn.Module, path: Path, cfg: ModelConfig, image_size: int) -> dict[str, float]:
    """Max |ours - plain timm| per resolution; ExportError where they must agree and do not.

    They must agree at every size where both resample the position table the same way: the trained
    grid always, other sizes unless ours uses DINO's own interpolation (then the gap is only logged).
    """
    reloaded = load_timm_backbone(path)
    generator = torch.Generator().manual_seed(0)
    sizes = dict.fromkeys((cfg.img_size, image_size) if is_vit(cfg) else (image_size,))
    diffs = {}
    for size in sizes:
        images = torch.randn(RELOAD_IMAGES, 3, size, size, generator=generator)
        with torch.no_grad():
            diff = float((backbone(images) - reloaded(images)).abs().max())
        diffs[str(size)] = diff
        exact = not is_vit(cfg) or size == cfg.img_size or cfg.pos_interpolation != "dino"
        if exact and diff > RELOAD_TOLERANCE:
            raise ExportError(f"{path} reloaded into timm differs from the checkpoint's backbone by {diff:.3g} "
                              f"> {RELOAD_TOLERANCE:g} at {size} px; it was removed")
        if not exact:
            logger.info("at %d px timm's position-embedding resampling differs from DINO's by up to %.3g", size, diff)
    return diffs
