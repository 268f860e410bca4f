"""DINO multi-crop augmentation and the evaluation transform.

Caron et al., ICCV 2021, Sec. 3 and App.; the official `DataAugmentationDINO`: two global crops
(blur p 1.0 / 0.1, solarisation p 0.2 on the second) and N local crops (blur p 0.5), each with
flip, colour jitter (p 0.8) and grayscale (p 0.2). Blur and solarisation are PIL's, as in the
official code. Every crop is built by one `view()` helper so the three kinds cannot drift apart.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms as T

from dino_model.config import CropConfig, EvalConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RandomGaussianBlur:
    """PIL Gaussian blur with radius ~ U(0.1, 2.0), applied with probability p."""

    def __init__(self, p: float, radius_min: float = 0.1, radius_max: float = 2.0) -> None:
        self.p, self.radius_min, self.radius_max = p, radius_min, radius_max

    def __call__(self, img: Image.Image) -> Image.Image:
        if random.random() > self.p:
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(self.radius_min, self.radius_max)))


class RandomSolarize:
    """PIL solarisation (threshold 128) with probability p."""

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        return ImageOps.solarize(img) if random.random() < self.p else img


def view(size: int, scale: Sequence[float], *, blur_p: float, solarize_p: float = 0.0,
         blur_radius: Sequence[float] = (0.1, 2.0), flip_p: float = 0.5, color_jitter_p: float = 0.8) -> T.Compose:
    """One augmented view: random resized crop, flip and colour, blur, solarise, normalise."""
    steps = [
        T.RandomResizedCrop(size, scale=tuple(scale), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(p=flip_p),
        T.RandomApply([T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=color_jitter_p),
        T.RandomGrayscale(p=0.2),
        RandomGaussianBlur(blur_p, *blur_radius),
    ]
    if solarize_p > 0:
        steps.append(RandomSolarize(solarize_p))
    steps += [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return T.Compose(steps)


class MultiCropTransform:
    """Image -> [global 1, global 2, local 1, ..., local N] tensors."""

    def __init__(self, cfg: CropConfig) -> None:
        common = dict(blur_radius=tuple(cfg.blur_radius), flip_p=cfg.flip_p, color_jitter_p=cfg.color_jitter_p)
        self.global1 = view(cfg.global_size, cfg.global_scale, blur_p=1.0, **common)
        self.global2 = view(cfg.global_size, cfg.global_scale, blur_p=0.1, solarize_p=cfg.solarize_p, **common)
        self.local = view(cfg.local_size, cfg.local_scale, blur_p=0.5, **common)
        self.n_local = cfg.local_crops_number

    @property
    def n_crops(self) -> int:
        return 2 + self.n_local

    def __call__(self, img: Image.Image) -> list[torch.Tensor]:
        return [self.global1(img), self.global2(img)] + [self.local(img) for _ in range(self.n_local)]


def eval_transform(cfg: EvalConfig) -> T.Compose:
    """Resize (bicubic) then centre crop, as the official k-NN and linear evaluations do."""
    return T.Compose(
        [
            T.Resize(cfg.resize_size, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(cfg.image_size),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
