"""Backbone weights as a `.safetensors` file that plain timm loads, and the loader for it.

The file holds the teacher backbone's state dict under timm's own parameter names (no `backbone.`
prefix, no head), so `timm.create_model(name, **kwargs).load_state_dict(load_file(path), strict=True)`
rebuilds it without this project. Its string metadata says which timm model and `create_model`
arguments to use, and how images are prepared (size, mean, std), so the file is self-describing.
This module imports only torch, timm and safetensors: `hubconf.py` calls `load_timm_backbone` from a
checkout, and nothing heavier should be needed to load a model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from dino_model.errors import ExportError
from dino_model.runtime import atomic

SUFFIX = ".safetensors"
TIMM_NAME = "dino.timm_name"
TIMM_KWARGS = "dino.timm_kwargs"  # JSON object: every keyword of timm.create_model, num_classes=0 included
CHECKPOINT_SHA256 = "checkpoint_sha256"
ARCH = "dino.arch"
REQUIRED = (TIMM_NAME, TIMM_KWARGS)


def save_backbone(backbone: nn.Module, path: str | Path, metadata: Mapping[str, str]) -> Path:
    """Write the state dict of `backbone` with `metadata` to `path`, atomically (temporary file, then rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != SUFFIX:
        raise ExportError(f"output {path} must end in {SUFFIX}")
    missing = [key for key in REQUIRED if key not in metadata]
    if missing:
        raise ExportError(f"metadata for {path} lacks {', '.join(missing)}: the file could not be rebuilt")
    bad = sorted(k for k, v in metadata.items() if not isinstance(v, str))
    if bad:
        raise ExportError(f"safetensors metadata holds strings only; {', '.join(bad)} are not")
    state = {key: value.detach().cpu().contiguous() for key, value in backbone.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.replacing(path) as temporary:
        save_file(state, str(temporary), metadata={"format": "pt", **metadata})
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a `.safetensors` file; ExportError when it does not say how to rebuild the model."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
    except Exception as exc:  # safetensors raises its own SafetensorError for a damaged header
        raise ExportError(f"cannot read {path} as safetensors: {exc}") from exc
    missing = [key for key in REQUIRED if key not in metadata]
    if missing:
        raise ExportError(f"{path} carries no {', '.join(missing)} metadata; write it with "
                          "`dino-mlops export --format safetensors`")
    return metadata


def timm_arguments(metadata: Mapping[str, str]) -> tuple[str, dict[str, Any]]:
    """The timm model name and the keyword arguments of `timm.create_model` recorded in the metadata."""
    kwargs = json.loads(metadata[TIMM_KWARGS])
    if not isinstance(kwargs, dict):
        raise ExportError(f"{TIMM_KWARGS} must be a JSON object, got {metadata[TIMM_KWARGS]!r}")
    return metadata[TIMM_NAME], kwargs


def load_timm_backbone(path: str | Path, *, family: str = "", **overrides: Any) -> nn.Module:
    """A plain timm model built from the file's metadata, its weights loaded strictly, in eval mode.

    `family` ("vit", "resnet"; "" for any) refuses a file holding another kind of backbone.
    `overrides` replace recorded `create_model` arguments (e.g. `dynamic_img_size=False`); any that
    change the parameters' shapes make the strict load fail with an ExportError.
    """
    import timm
    from safetensors.torch import load_file

    metadata = read_metadata(path)
    arch = metadata.get(ARCH, "")
    if family and not arch.startswith(family):
        raise ExportError(f"{path} holds a {arch or 'unknown'} backbone, not a {family} one")
    name, kwargs = timm_arguments(metadata)
    model = timm.create_model(name, pretrained=False, **(kwargs | overrides))
    try:
        model.load_state_dict(load_file(str(path)), strict=True)
    except RuntimeError as exc:
        raise ExportError(f"{path} does not fit timm.create_model({name!r}, **{kwargs | overrides}): {exc}") from exc
    return model.eval()
