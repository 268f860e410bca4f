"""Image folders read without torch: scanning, labels from class sub-folders, and why a file is unreadable.

The client-only install (`dino-mlops infer` from the dino-mlops-client distribution) embeds folders
without PyTorch, so the scan lives here rather than beside the torch Dataset in datasets.py.
Unreadable or corrupt files are found when the folder is scanned, skipped, and counted in the log,
so a bad file never stops a long run. That includes images whose header declares more pixels than
the project's cap (pixel_cap.py: a PNG of a few dozen KB can declare 12000 x 12000 pixels),
found from the header before anything is decoded, and files that vanish between the scan and their
first read. Every image of a folder is opened through pixel_cap.open_image, so the cap holds for
the scan, training, evaluation and `dino-mlops infer` alike. Labels follow sorted class-folder names
(torchvision's ImageFolder order); a flat folder has label -1 everywhere.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from dino_model.data.pixel_cap import open_image
from dino_model.errors import DataError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm")

# What PIL raises for a file that is not a decodable image of a sane size (DecompressionBombError
# includes pixel_cap.ImageTooLargeError, an image over the cap); OSError covers missing files and
# truncated data. Anything else is a bug and keeps its traceback.
UNREADABLE_ERRORS: tuple[type[Exception], ...] = (
    UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError)


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass(frozen=True)
class FolderScan:
    classes: list[str]
    samples: list[Sample]
    skipped: list[tuple[Path, str]]  # (file, why it cannot be read)


def load_rgb(path: Path) -> Image.Image:
    """The image at `path` as RGB; an image over the pixel cap raises ImageTooLargeError undecoded."""
    with open_image(path) as img:
        return img.convert("RGB")


def required_image(path: Path) -> Image.Image:
    """open_image for a file the caller cannot do without: a DataError naming it and why, when unusable."""
    try:
        return open_image(path)
    except UNREADABLE_ERRORS as exc:
        raise DataError(f"cannot use {path}: {unreadable_reason(exc)}") from None


def unreadable_reason(exc: BaseException) -> str:
    """Why an image file cannot be used, in words, for logs and skip lists."""
    if isinstance(exc, Image.DecompressionBombError):
        return f"image too large to decode safely ({exc})"
    if isinstance(exc, FileNotFoundError):
        return "file no longer exists"
    return f"not a readable image: {exc}"


def scan_folder(root: Path) -> FolderScan:
    """The folder's classes, its readable samples, and each skipped file with the reason."""
    classes = folder_classes(root)
    if classes:
        candidates = [(p, i) for i, name in enumerate(classes) for p in _image_files(root / name)]
    else:
        candidates = [(p, -1) for p in _image_files(root)]
    samples, bad = [], []
    for path, label in candidates:
        reason = _unreadable(path)
        (bad.append((path, reason)) if reason else samples.append(Sample(path, label)))
    if bad:
        shown = ", ".join(f"{p} ({why})" for p, why in bad[:5])
        logger.warning("skipped %d unreadable image(s) in %s: %s%s", len(bad), root, shown,
                       " ..." if len(bad) > 5 else "")
    if not samples:
        raise DataError(
            f"{root} holds no readable image ({len(bad)} file(s) skipped as unreadable; "
            f"looked for {', '.join(IMAGE_EXTENSIONS)})"
        )
    return FolderScan(classes, samples, bad)


def folder_classes(root: Path) -> list[str]:
    """The class names of an image folder (sub-folders holding images, sorted), without reading an image."""
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a directory")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    return [d.name for d in class_dirs if any(_image_files(d))]


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _unreadable(path: Path) -> str | None:
    """None when the whole file decodes; else why it does not (the pixel cap is checked before decoding)."""
    try:
        with open_image(path) as img:
            img.verify()
        with open_image(path) as img:
            img.load()
    except UNREADABLE_ERRORS as exc:
        return unreadable_reason(exc)
    return None
