"""Image files and folders in, FP32 batches out, preprocessed exactly as the evaluation does.

The served model's contract fixes the sizes; the steps are `eval_transform`'s (bicubic resize of the
shorter side, centre crop, /255, normalisation), so an embedding from the server equals the one k-NN
evaluation computes for the same file. They are written with PIL and numpy, not torchvision, so that
the client-only install (dino-mlops-client) needs no PyTorch; each step follows torchvision's
arithmetic on PIL images (sizes, crop offsets, zero padding, float32 division) and a test holds the
result equal to `eval_transform`. The steps themselves live in dino_model/triton/python_backend/
preprocessing.py, which the server's image entry point ships and runs, so the two cannot drift
apart. A corrupt file, an image whose header declares more pixels than the project's cap
(data/pixel_cap.py, DINO_MAX_IMAGE_PIXELS; refused before it is decoded) or a file removed
meanwhile is skipped and named with the reason, never fatal: the rest of the inputs are still embedded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dino_model.data.folders import IMAGE_EXTENSIONS, UNREADABLE_ERRORS, load_rgb, scan_folder, unreadable_reason
from dino_model.data.pixel_cap import open_image
from dino_model.errors import DataError
from dino_model.export.contract import ModelContract
from dino_model.triton.python_backend.preprocessing import Preprocess, center_crop, resize_shorter_side

__all__ = ["ImageItem", "Preprocess", "center_crop", "collect_images", "load_batch", "read_encoded",
           "resize_shorter_side", "transform_for"]

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


def read_encoded(items: Sequence[ImageItem]) -> tuple[list[bytes], list[ImageItem], list[dict[str, str]]]:
    """(the encoded bytes of each usable file, its item, {"path", "reason"} of those skipped), for a server
    that preprocesses: each header is read here first (format, pixel cap), so a corrupt file or one
    over the cap is skipped and named before anything is sent; the server checks again."""
    encoded, kept, skipped = [], [], []
    for item in items:
        try:
            with open_image(item.path):
                pass
            encoded.append(item.path.read_bytes())
            kept.append(item)
        except UNREADABLE_ERRORS as exc:
            reason = unreadable_reason(exc)
            logger.warning("skipped %s: %s", item.path, reason)
            skipped.append({"path": str(item.path), "reason": reason})
    return encoded, kept, skipped
