"""Random parameters of the multi-crop views, drawn per image from a generator seeded by that image.

The device-side multi-crop (gpu_crops.py) must give an image the same crops whichever process,
worker or batch it lands in, so nothing is drawn from a shared random stream: each image's
generator is seeded from (seed, epoch, index) exactly as the PIL path seeds its transform
(`seeding.item_seed`), and fills one fixed block of uniforms per crop. Every parameter is a
function of its own columns of that block, which keeps the draws vectorised over the batch (a few
tensor operations per batch instead of a dozen scalar draws per crop) and independent of the
batch's composition.

The distributions are the official `DataAugmentationDINO`'s: torchvision's RandomResizedCrop
(10 attempts at area ~ U(scale), log aspect ratio ~ U(log 3/4, log 4/3), then the centre-crop
fallback), flip p 0.5, ColorJitter(0.4, 0.4, 0.2, 0.1) with p 0.8 and a uniformly random order of
its four operations, grayscale p 0.2, blur with sigma ~ U(blur_radius), solarisation. The draws
themselves are not torchvision's (torchvision draws integers with `randint`, we map uniforms), so
the crops equal the PIL path's in distribution, not image by image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dino_model.config import CropConfig

RATIO = (3.0 / 4.0, 4.0 / 3.0)
JITTER = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue (official ColorJitter)
GRAYSCALE_P = 0.2
ATTEMPTS = 10  # torchvision RandomResizedCrop

# Columns of one crop's block of uniforms.
_AREA, _RATIO, _TOP, _LEFT = (slice(k * ATTEMPTS, (k + 1) * ATTEMPTS) for k in range(4))
_FLIP, _JITTER, _GRAY, _BLUR, _SIGMA, _SOLARIZE = range(4 * ATTEMPTS, 4 * ATTEMPTS + 6)
_ORDER = slice(4 * ATTEMPTS + 6, 4 * ATTEMPTS + 10)
_FACTORS = slice(4 * ATTEMPTS + 10, 4 * ATTEMPTS + 14)
UNIFORMS_PER_CROP = 4 * ATTEMPTS + 14


@dataclass(frozen=True)
class ViewSpec:
    """One crop of the multi-crop set: its output size, area range and blur/solarisation probabilities."""

    size: int
    scale: tuple[float, float]
    blur_p: float
    solarize_p: float


@dataclass
class CropParams:
    """Parameters of every crop of a batch; each field is indexed [image, crop]."""

    boxes: torch.Tensor  # int64 (B, n, 4): top, left, height, width in the decoded image
    flip: torch.Tensor  # bool (B, n)
    jitter: torch.Tensor  # bool (B, n): colour jitter applied
    order: torch.Tensor  # int64 (B, n, 4): jitter operations in application order (0 b, 1 c, 2 s, 3 h)
    factors: torch.Tensor  # float (B, n, 4): brightness, contrast, saturation factors and the hue shift
    gray: torch.Tensor  # bool (B, n)
    blur: torch.Tensor  # bool (B, n)
    sigma: torch.Tensor  # float (B, n): Gaussian standard deviation in pixels
    solarize: torch.Tensor  # bool (B, n)


def view_specs(cfg: CropConfig) -> list[ViewSpec]:
    """[global 1, global 2, local 1, ..., local N], as the official transform builds them."""
    global_scale, local_scale = tuple(cfg.global_scale), tuple(cfg.local_scale)
    return [
        ViewSpec(cfg.global_size, global_scale, blur_p=1.0, solarize_p=0.0),
        ViewSpec(cfg.global_size, global_scale, blur_p=0.1, solarize_p=cfg.solarize_p),
        *[ViewSpec(cfg.local_size, local_scale, blur_p=0.5, solarize_p=0.0)] * cfg.local_crops_number,
    ]


def draw_uniforms(seeds: list[int], n_crops: int) -> torch.Tensor:
    """float64 (B, n_crops, UNIFORMS_PER_CROP) in [0, 1), row b from a generator seeded by seeds[b]."""
    blocks = []
    for seed in seeds:
        generator = torch.Generator().manual_seed(int(seed))
        blocks.append(torch.rand(n_crops, UNIFORMS_PER_CROP, generator=generator, dtype=torch.float64))
    return torch.stack(blocks)


def crop_params(uniforms: torch.Tensor, sizes: torch.Tensor, specs: list[ViewSpec], cfg: CropConfig) -> CropParams:
    """Parameters from the uniforms of `draw_uniforms` and the decoded sizes, int64 (B, 2) height and width."""
    u = uniforms
    p = lambda key: torch.tensor([getattr(s, key) for s in specs], dtype=torch.float64)  # noqa: E731
    order = torch.argsort(u[..., _ORDER], dim=-1)  # ranks of iid uniforms: each of the 24 orders equally likely
    spans = torch.tensor([[1 - j, 1 + j] for j in JITTER[:3]] + [[-JITTER[3], JITTER[3]]], dtype=torch.float64)
    factors = spans[:, 0] + u[..., _FACTORS] * (spans[:, 1] - spans[:, 0])
    radius_lo, radius_hi = float(cfg.blur_radius[0]), float(cfg.blur_radius[1])
    return CropParams(
        boxes=crop_boxes(u, sizes, specs),
        flip=u[..., _FLIP] < cfg.flip_p,
        jitter=u[..., _JITTER] < cfg.color_jitter_p,
        order=order,
        factors=factors.float(),
        gray=u[..., _GRAY] < GRAYSCALE_P,
        blur=u[..., _BLUR] < p("blur_p"),
        sigma=(radius_lo + u[..., _SIGMA] * (radius_hi - radius_lo)).float(),
        solarize=u[..., _SOLARIZE] < p("solarize_p"),
    )


def crop_boxes(u: torch.Tensor, sizes: torch.Tensor, specs: list[ViewSpec]) -> torch.Tensor:
    """torchvision's RandomResizedCrop boxes (top, left, height, width), vectorised over images and crops."""
    height = sizes[:, 0, None, None].double()  # (B, 1, 1): broadcast over crops and attempts
    width = sizes[:, 1, None, None].double()
    lo = torch.tensor([s.scale[0] for s in specs], dtype=torch.float64)[:, None]
    hi = torch.tensor([s.scale[1] for s in specs], dtype=torch.float64)[:, None]
    target_area = height * width * (lo + u[..., _AREA] * (hi - lo))
    log_lo, log_hi = math.log(RATIO[0]), math.log(RATIO[1])
    aspect = torch.exp(log_lo + u[..., _RATIO] * (log_hi - log_lo))
    w = torch.round(torch.sqrt(target_area * aspect))  # round half to even, as Python's round()
    h = torch.round(torch.sqrt(target_area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.argmax(fits.to(torch.int8), dim=-1, keepdim=True)  # first attempt that fits
    pick = lambda t: t.gather(-1, first).squeeze(-1)  # noqa: E731
    h, w = pick(h), pick(w)
    top = torch.floor(pick(u[..., _TOP]) * (height[..., 0] - h + 1))
    left = torch.floor(pick(u[..., _LEFT]) * (width[..., 0] - w + 1))
    fallback = _centre_boxes(height[..., 0], width[..., 0]).expand(-1, u.shape[1], -1)
    boxes = torch.stack([top, left, h, w], dim=-1)
    return torch.where(fits.any(-1, keepdim=True), boxes, fallback).long()


def _centre_boxes(height: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """(B, 1, 4) torchvision's fallback when no attempt fits: the central crop of the clamped aspect ratio."""
    in_ratio = width / height
    w = torch.where(in_ratio > RATIO[1], torch.round(height * RATIO[1]), width)
    h = torch.where(in_ratio < RATIO[0], torch.round(width / RATIO[0]), height)
    top, left = torch.div(height - h, 2, rounding_mode="floor"), torch.div(width - w, 2, rounding_mode="floor")
    return torch.stack([top, left, h, w], dim=-1)
