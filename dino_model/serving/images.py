"""Image files and folders in, FP32 batches out, preprocessed exactly as the evaluation does.

The served model's contract fixes the sizes; the steps are `eval_transform`'s (bicubic resize,
centre crop, ImageNet normalisation), so an embedding from the server equals the one k-NN
evaluation computes for the same file. A corrupt file, a decompression bomb (an image declaring
more pixels than PIL will decode) or a file removed meanwhile is skipped and named with the
reason, never fatal: the rest of the inputs are still embedded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torchvision import transforms as T

from dino_model.config import EvalConfig
from dino_model.data.datasets import IMAGE_EXTENSIONS, UNREADABLE_ERRORS, load_rgb, scan_folder, unreadable_reason
from dino_model.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform
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


def transform_for(contract: ModelContract) -> Callable:
    """The evaluation transform at the contract's sizes, normalised with the contract's statistics."""
    transform = eval_transform(EvalConfig(image_size=contract.image_size, resize_size=contract.resize_size))
    if (tuple(contract.mean), tuple(contract.std)) != (IMAGENET_MEAN, IMAGENET_STD):
        transform.transforms[-1] = T.Normalize(contract.mean, contract.std)
    return transform


def load_batch(items: Sequence[ImageItem], transform: Callable
               ) -> tuple[np.ndarray, list[ImageItem], list[dict[str, str]]]:
    """(images (b, 3, S, S) float32, the items that loaded, {"path", "reason"} of those that did not)."""
    arrays, kept, skipped = [], [], []
    for item in items:
        try:
            arrays.append(transform(load_rgb(item.path)).numpy())
            kept.append(item)
        except UNREADABLE_ERRORS as exc:
            reason = unreadable_reason(exc)
            logger.warning("skipped %s: %s", item.path, reason)
            skipped.append({"path": str(item.path), "reason": reason})
    images = np.stack(arrays).astype(np.float32, copy=False) if arrays else np.zeros((0, 3, 1, 1), np.float32)
    return images, kept, skipped
