"""Image files and folders in, FP32 batches out, preprocessed exactly as the evaluation does.

The served model's contract fixes the sizes; the steps are `eval_transform`'s (bicubic resize of the
shorter side, centre crop, /255, normalisation), so an embedding from the server equals the one k-NN
evaluation computes for the same file. They are written with PIL and numpy, not torchvision, so that
the client-only install (dino-mlops-client) needs no PyTorch; each step follows torchvision's
arithmetic on PIL images (sizes, crop offsets, zero padding, float32 division) and a test holds the
result equal to `eval_transform`. A corrupt file, an image whose header declares more pixels than
the project's cap (data/pixel_cap.py, DINO_MAX_IMAGE_PIXELS; refused before it is decoded) or a file
removed meanwhile is skipped and named with the reason, never fatal: the rest of the inputs are
still embedded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dino_model.data.folders import IMAGE_EXTENSIONS, UNREADABLE_ERRORS, load_rgb, scan_folder, unreadable_reason
from dino_model.errors import DataError
from dino_model.export.contract import ModelContract

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageItem:
    path: Path
    label: str = ""  # class folder name; "" when unlabelled


def collect_images(inputs: Sequence[str | Path]) -> tuple[list[ImageItem], list[dict[str, str]]]:
    """Image items from files and folders (class sub-folders give labels), and what was skipped."""
    items: list[ImageItem] = []
    skipped: list[dict[str, str]] = []
    for entry in map(Path, inputs):
        if entry.is_dir():
            scan = scan_folder(entry)
            items += [ImageItem(s.path, scan.classes[s.label] if s.label >= 0 else "") for s in scan.samples]
            skipped += [{"path": str(path), "reason": reason} for path, reason in scan.skipped]
        elif entry.is_file():
            items.append(ImageItem(entry))
        else:
            raise DataError(f"{entry} is neither an image file nor a folder (image files end in "
                            f"{', '.join(IMAGE_EXTENSIONS)})")
    return items, skipped


@dataclass(frozen=True)
class Preprocess:
    """RGB image -> float32 (3, image_size, image_size): resize, centre crop, /255, normalise."""

    image_size: int
    resize_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, image: Image.Image) -> np.ndarray:
        pixels = center_crop(np.asarray(resize_shorter_side(image, self.resize_size)), self.image_size)
        scaled = pixels.astype(np.float32) / np.float32(255)
        mean = np.asarray(self.mean, np.float32).reshape(1, 1, -1)
        std = np.asarray(self.std, np.float32).reshape(1, 1, -1)
        return ((scaled - mean) / std).transpose(2, 0, 1)


def resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
    """Bicubic resize of the shorter side to `size`, the longer one truncated in proportion."""
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_size = (new_short, new_long) if width <= height else (new_long, new_short)
    return image if new_size == image.size else image.resize(new_size, Image.Resampling.BICUBIC)


def center_crop(pixels: np.ndarray, size: int) -> np.ndarray:
    """The central size x size window of (H, W, C) pixels, zero-padded first where the image is smaller."""
    height, width = pixels.shape[:2]
    if size > height or size > width:
        pad_h, pad_w = max(size - height, 0), max(size - width, 0)
        pixels = np.pad(pixels, ((pad_h // 2, (pad_h + 1) // 2), (pad_w // 2, (pad_w + 1) // 2), (0, 0)))
        height, width = pixels.shape[:2]
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return pixels[top : top + size, left : left + size]


def transform_for(contract: ModelContract) -> Preprocess:
    """The evaluation preprocessing at the contract's sizes, normalised with the contract's statistics."""
    return Preprocess(contract.image_size, contract.resize_size, tuple(contract.mean), tuple(contract.std))


def load_batch(items: Sequence[ImageItem], transform: Callable
               ) -> tuple[np.ndarray, list[ImageItem], list[dict[str, str]]]:
    """(images (b, 3, S, S) float32, the items that loaded, {"path", "reason"} of those that did not)."""
    arrays, kept, skipped = [], [], []
    for item in items:
        try:
            arrays.append(np.asarray(transform(load_rgb(item.path))))
            kept.append(item)
        except UNREADABLE_ERRORS as exc:
            reason = unreadable_reason(exc)
            logger.warning("skipped %s: %s", item.path, reason)
            skipped.append({"path": str(item.path), "reason": reason})
    images = np.stack(arrays).astype(np.float32, copy=False) if arrays else np.zeros((0, 3, 1, 1), np.float32)
    return images, kept, skipped
