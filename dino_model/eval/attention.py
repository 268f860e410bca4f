"""Self-attention maps of the last block: the CLS token's attention to the patches, per head.

Caron et al., ICCV 2021, Sec. 4.2.1 and Fig. 1/3 (`visualize_attention.py`): the image is resized
to a fixed size and cropped to a multiple of the patch size; the last block's softmaxed attention
is read with the CLS token as query and the patches as keys, one (h, w) map per head. Thresholding
keeps, per head, the highest-attention patches that together hold `threshold` of the mass (the
paper shows 60 %). timm computes attention with a fused kernel that never returns the matrix, so
it is recomputed here from the last block's qkv projection on its normed input.
Writes `img.png`, `attn-head{j}.png` (heat-map overlays), `mask_th{t}_head{j}.png`, `grid.png`
and `attention.json` (metrics in the shared envelope) per image.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from torch import Tensor, nn
from torchvision import transforms as T

from dino_model.data.folders import required_image
from dino_model.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from dino_model.errors import ConfigError
from dino_model.eval.report import build_report, metrics_table, write_report
from dino_model.eval.settings import ATTENTION_IMAGE_SIZE, ATTENTION_THRESHOLD
from dino_model.models.backbone import patch_grid

logger = logging.getLogger(__name__)

OVERLAY_ALPHA = 0.5
MASK_COLOURS = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180))


@torch.inference_mode()
def last_self_attention(model: nn.Module, images: Tensor, *, cls_only: bool = False) -> Tensor:
    """Softmaxed attention of the last block, (B, heads, T, T) with T = prefix tokens + patches.

    cls_only=True returns only the CLS query's row, (B, heads, 1, T): the same values in O(T)
    memory instead of O(T²), which matters for large inputs (120 x 120 patches at 480 px, patch 4).
    """
    if not hasattr(model, "blocks"):
        raise ConfigError("attention maps need a ViT backbone (model.arch=vit_*)")
    block = model.blocks[-1]
    captured: dict[str, Tensor] = {}
    handle = block.register_forward_pre_hook(lambda _module, args: captured.__setitem__("x", args[0]))
    try:
        model.forward_features(images)
    finally:
        handle.remove()
    attn = block.attn
    x = block.norm1(captured["x"])
    b, n, _ = x.shape
    q, k, _ = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if cls_only:
        q = q[:, :, :1]
    return ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)


def cls_attention_maps(model: nn.Module, image: Tensor) -> Tensor:
    """CLS-to-patch attention of one (1, 3, H, W) image, (heads, h, w)."""
    attn = last_self_attention(model, image, cls_only=True)[0]
    h, w = patch_grid(model, *image.shape[-2:])
    prefix = getattr(model, "num_prefix_tokens", 1)
    return attn[:, 0, prefix : prefix + h * w].reshape(-1, h, w)


def mass_threshold(maps: Tensor, keep: float = ATTENTION_THRESHOLD) -> Tensor:
    """Per head, the patches with the most attention that together hold `keep` of its mass.

    As the official code: sort ascending, normalise, cumulative sum, keep where cumsum > 1 - keep.
    maps: (heads, h, w) -> bool (heads, h, w).
    """
    if not 0 < keep <= 1:
        raise ConfigError(f"threshold={keep} must be in (0, 1]: the fraction of attention mass kept")
    flat = maps.flatten(1)
    values, order = flat.sort(dim=1)
    cumulative = (values / values.sum(dim=1, keepdim=True)).cumsum(dim=1)
    kept = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, order, cumulative > 1 - keep)
    return kept.reshape(maps.shape)


def preprocess(image: Image.Image, *, image_size: tuple[int, int] | None, patch_size: int) -> Tensor:
    """Resize to exactly image_size (H, W) unless None, normalise, crop H and W down to multiples of the patch."""
    resize = [T.Resize(image_size)] if image_size else []
    x = T.Compose([*resize, T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(image)
    h, w = x.shape[1] - x.shape[1] % patch_size, x.shape[2] - x.shape[2] % patch_size
    return x[:, :h, :w][None]


def heat_colours(values: np.ndarray) -> np.ndarray:
    """Black-red-yellow-white ('hot') colours (..., 3) uint8 for values in [0, 1]."""
    v = np.clip(values, 0, 1)[..., None] * 3 - np.array([0.0, 1.0, 2.0])
    return (np.clip(v, 0, 1) * 255).astype(np.uint8)


def overlay_heat(rgb: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """The image blended with a min-max scaled heat map of the same (H, W)."""
    span = heat.max() - heat.min()
    scaled = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
    return ((1 - OVERLAY_ALPHA) * rgb + OVERLAY_ALPHA * heat_colours(scaled)).astype(np.uint8)


def overlay_mask(rgb: np.ndarray, mask: np.ndarray, colour: Sequence[int]) -> np.ndarray:
    """The image with the mask tinted (alpha 0.5) and its contour drawn in the full colour."""
    out = rgb.astype(np.float64)
    out[mask] = (1 - OVERLAY_ALPHA) * out[mask] + OVERLAY_ALPHA * np.asarray(colour)
    contour = mask & ~ndimage.binary_erosion(mask, border_value=1)
    out[contour] = colour
    return out.astype(np.uint8)


def upsample(maps: Tensor, patch_size: int) -> np.ndarray:
    """Nearest upsampling of (heads, h, w) by the patch size, as numpy."""
    return maps.repeat_interleave(patch_size, dim=1).repeat_interleave(patch_size, dim=2).float().numpy()


def head_grid(tiles: list[np.ndarray], columns: int) -> np.ndarray:
    """Tiles of equal size laid out row-major with a 2-px white gap."""
    h, w = tiles[0].shape[:2]
    rows = math.ceil(len(tiles) / columns)
    grid = np.full((rows * (h + 2) - 2, columns * (w + 2) - 2, 3), 255, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        grid[r * (h + 2) : r * (h + 2) + h, c * (w + 2) : c * (w + 2) + w] = tile
    return grid


def attention_maps_for_image(model: nn.Module, image_path: str | Path, out_dir: str | Path, *, patch_size: int,
                             image_size: tuple[int, int] | None = ATTENTION_IMAGE_SIZE,
                             threshold: float | None = ATTENTION_THRESHOLD,
                             device: str = "cpu") -> dict[str, Any]:
    """Write the per-head overlays, masks and grid of one image; returns its statistics.

    image_size (H, W) is the official 480 x 480 by default; None keeps the image's own size.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with required_image(Path(image_path)) as image:  # one clear error for a bad file or one over the pixel cap
        x = preprocess(image.convert("RGB"), image_size=image_size, patch_size=patch_size)
    maps = cls_attention_maps(model, x.to(device)).cpu()
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    rgb = ((x[0] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    Image.fromarray(rgb).save(out_dir / "img.png")
    heat = upsample(maps, patch_size)
    tiles = [overlay_heat(rgb, heat[j]) for j in range(len(maps))]
    for j, tile in enumerate(tiles):
        Image.fromarray(tile).save(out_dir / f"attn-head{j}.png")
    probs = maps.flatten(1) / maps.flatten(1).sum(dim=1, keepdim=True)
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(dim=1) / math.log(probs.shape[1])
    stats: dict[str, Any] = {"image": str(image_path), "folder": str(out_dir), "heads": len(maps),
                             "patch_grid": list(maps.shape[1:]),
                             "normalised_entropy": entropy.tolist()}
    if threshold is not None:
        masks = upsample(mass_threshold(maps, threshold), patch_size).astype(bool)
        mask_tiles = [overlay_mask(rgb, masks[j], MASK_COLOURS[j % len(MASK_COLOURS)]) for j in range(len(maps))]
        for j, tile in enumerate(mask_tiles):
            Image.fromarray(tile).save(out_dir / f"mask_th{threshold}_head{j}.png")
        tiles += mask_tiles
        stats["kept_fraction"] = [float(m.mean()) for m in masks]
    Image.fromarray(head_grid(tiles, columns=len(maps))).save(out_dir / "grid.png")
    return stats


def run_attention_maps(checkpoint: str | Path, images: Sequence[str | Path], *, output_dir: str | Path,
                       image_size: tuple[int, int] | None = ATTENTION_IMAGE_SIZE,
                       threshold: float | None = ATTENTION_THRESHOLD,
                       device: str = "cpu") -> dict[str, Any]:
    """Attention maps of the teacher backbone for each image, under output_dir/<image stem>/.

    A stem seen before gets a numbered folder (`<stem>-1`, ...); details.images[i].folder names it.
    """
    from dino_model.models.backbone import is_vit
    from dino_model.models.loading import load_backbone

    if not images:
        raise ConfigError("no image given; pass one or more image paths")
    backbone, model_cfg = load_backbone(checkpoint)
    if not is_vit(model_cfg):
        raise ConfigError(f"attention maps need a ViT; {checkpoint} holds a {model_cfg.arch}")
    backbone = backbone.to(device)
    output_dir = Path(output_dir)
    per_image = [attention_maps_for_image(backbone, p, output_dir / folder, patch_size=model_cfg.patch_size,
                                          image_size=image_size, threshold=threshold, device=device)
                 for p, folder in zip(images, _folder_names(images), strict=True)]
    metrics = {"attention_entropy_mean": float(np.mean([np.mean(s["normalised_entropy"]) for s in per_image]))}
    if threshold is not None:
        metrics["attention_kept_fraction_mean"] = float(np.mean([np.mean(s["kept_fraction"]) for s in per_image]))
    details = {"threshold": threshold, "image_size": list(image_size) if image_size else None,
               "patch_size": model_cfg.patch_size,
               "images": per_image}
    report = build_report("attention", checkpoint, metrics, details)
    md = (f"# Attention maps\n\n{checkpoint}: {len(per_image)} image(s), last block, CLS query, "
          f"threshold {threshold}\n\n" + metrics_table(metrics)
          + "".join(f"\n![{Path(s['image']).name}]({Path(s['folder']).name}/grid.png)\n" for s in per_image))
    path = write_report(report, output_dir / "attention.json", md)
    logger.info("attention maps of %d image(s) written under %s", len(per_image), output_dir)
    return report | {"report_path": str(path)}


def _folder_names(images: Sequence[str | Path]) -> list[str]:
    seen: dict[str, int] = {}
    names = []
    for path in images:
        stem = Path(path).stem
        names.append(f"{stem}-{seen[stem]}" if stem in seen else stem)
        seen[stem] = seen.get(stem, 0) + 1
    return names
