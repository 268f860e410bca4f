"""Tiny labelled image folders whose every image says who it is, for the shard tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dino_model.config import CropConfig
from dino_model.data.transforms import MultiCropTransform


def write_folder(root: Path, n: int, *, classes: int = 3, size: int = 16, fmt: str = "png") -> list[Path]:
    """n images spread over `classes` class folders; image i's pixel (0, 0) is (i % 256, i // 256, 255)."""
    rng = np.random.default_rng(n)
    paths = []
    for i in range(n):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        pixels[0, 0] = (i % 256, i // 256, 255)
        path = root / f"c{i % classes}" / f"img{i:04d}.{fmt}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def image_id(image: Image.Image) -> int:
    r, g, _ = image.getpixel((0, 0))
    return r + 256 * g


class IdTransform:
    """[tensor([image id])]: no randomness, so a stream's content can be read back."""

    def __call__(self, image: Image.Image) -> list[torch.Tensor]:
        return [torch.tensor([image_id(image)])]


class IdAndCrops:
    """[tensor([image id]), *multi-crop views]: identifies the image and keeps the seeded crops."""

    def __init__(self) -> None:
        self.crops = MultiCropTransform(CropConfig(global_size=8, local_size=4, local_crops_number=1,
                                                   local_scale=[0.2, 0.4]))

    def __call__(self, image: Image.Image) -> list[torch.Tensor]:
        return [torch.tensor([image_id(image)]), *self.crops(image)]
