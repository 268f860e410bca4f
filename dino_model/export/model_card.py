"""The model card written beside an exported `.safetensors` file (`<stem>.md`).

Rendered from the file's own metadata alone, so the card cannot say anything the weights do not
carry: what the backbone is, how timm rebuilds it, how images are prepared, which data and run it
came from, its evaluation scores, and how to load it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from dino_model.export.safetensors import ARCH, CHECKPOINT_SHA256, TIMM_KWARGS, TIMM_NAME

HUB_ENTRIES = {"vit": "dino_vit", "resnet": "dino_resnet"}  # the functions of hubconf.py


def render_card(metadata: Mapping[str, str], *, weights: str, sha256: str) -> str:
    """Markdown: summary table, metrics, and how to load the file `weights` (its sha256 given)."""
    return "\n".join([*_summary(metadata, weights, sha256), "", *_metrics(metadata), "",
                      *_how_to_load(metadata, weights), ""])


def _get(metadata: Mapping[str, str], key: str) -> str:
    return metadata.get(key, "") or "unknown"


def _summary(metadata: Mapping[str, str], weights: str, sha256: str) -> list[str]:
    arch, kwargs = metadata.get(ARCH, ""), json.loads(metadata[TIMM_KWARGS])
    patch = metadata.get("dino.patch_size", "0")
    mean, std = _get(metadata, "dino.mean"), _get(metadata, "dino.std")
    rows = [
        ("architecture", f"`{arch}`" + (f", depth {kwargs['depth']}" if "depth" in kwargs else "")),
        ("timm model", f"`{metadata[TIMM_NAME]}`"),
        ("timm.create_model arguments", f"`{metadata[TIMM_KWARGS]}`"),
        ("patch size", patch if patch != "0" else "- (convolutional)"),
        ("image size", f"{_get(metadata, 'dino.image_size')} (resize to {_get(metadata, 'dino.resize_size')}, "
                       f"{_get(metadata, 'dino.interpolation')}, then centre crop)"),
        ("embedding dim", _get(metadata, "dino.embed_dim")),
        ("normalisation", f"mean {mean}, std {std} (pixels scaled to [0, 1] first)"),
        ("data version", _get(metadata, "data_version")),
        ("code revision", _get(metadata, "code_revision")),
        ("checkpoint", f"`{_get(metadata, 'checkpoint')}` (sha256 `{_get(metadata, CHECKPOINT_SHA256)}`)"),
        ("weights", f"`{weights}` (sha256 `{sha256}`)"),
    ]
    feature = ("the CLS token after the final norm" if kwargs.get("global_pool", "token") == "token"
               else "the mean patch token")
    if not arch.startswith("vit"):
        feature = "the globally average-pooled last feature map"
    return [
        f"# DINO backbone `{arch}`", "",
        f"The teacher backbone of a self-supervised DINO run. It maps images (B, 3, S, S) to features "
        f"(B, D): {feature}, not L2-normalised.", "",
        "| | |", "| --- | --- |", *(f"| {name} | {value} |" for name, value in rows),
    ]


def _metrics(metadata: Mapping[str, str]) -> list[str]:
    metrics = json.loads(metadata.get("metrics") or "{}")
    if not metrics:
        return ["## Metrics", "", "No evaluation report was found for this run."]
    return ["## Metrics", "", "| metric | value |", "| --- | --- |",
            *(f"| {name} | {value:.4g} |" for name, value in sorted(metrics.items()))]


def _how_to_load(metadata: Mapping[str, str], weights: str) -> list[str]:
    kwargs = json.loads(metadata[TIMM_KWARGS])
    arguments = ", ".join([repr(metadata[TIMM_NAME]), *(f"{k}={v!r}" for k, v in kwargs.items())])
    family = "vit" if metadata.get(ARCH, "").startswith("vit") else "resnet"
    size = _get(metadata, "dino.image_size")
    lines = [
        "## How to load", "",
        "With timm and safetensors alone:", "",
        "```python",
        "import timm",
        "from safetensors.torch import load_file",
        f"model = timm.create_model({arguments})",
        f"model.load_state_dict(load_file({weights!r}), strict=True)",
        f"model.eval()  # (B, 3, {size}, {size}) normalised images -> (B, {_get(metadata, 'dino.embed_dim')})",
        "```", "",
        "With torch.hub, from a checkout of this repository (it reads the metadata above):", "",
        "```python",
        "import torch",
        f"model = torch.hub.load('path/to/dino-mlops', {HUB_ENTRIES[family]!r}, source='local', weights={weights!r})",
        "```",
    ]
    if family == "vit" and metadata.get("dino.pos_interpolation") == "dino":
        lines += ["", f"At {kwargs.get('img_size', size)} px the outputs equal those of the training code. "
                      "At other resolutions (multiples of the patch size) timm resamples the position embeddings "
                      "with antialiased bicubic interpolation, while DINO's own code scales by (n + 0.1) / sqrt(N) "
                      "without antialiasing; the features then differ slightly."]
    return lines
