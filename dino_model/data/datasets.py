"""Image folders: class sub-folders when labels exist, flat when they do not.

Unreadable or corrupt files are found when the folder is scanned, skipped, and counted in the log,
so a bad file never stops a long run. Labels follow sorted class-folder names (torchvision's
ImageFolder order); a flat folder has label -1 everywhere.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from dino_model.errors import DataError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm")


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


class ImageFolderDataset(Dataset):
    """Readable images below `root`; item = (transform(image), label)."""

    def __init__(self, root: str | Path, transform: Callable[[Image.Image], Any] | None = None) -> None:
        self.root = Path(root)
        self.transform = transform
        self.classes, self.samples, self.n_skipped = scan_image_folder(self.root)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    def load(self, index: int) -> Image.Image:
        return load_rgb(self.samples[index].path)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self.load(index)
        return (self.transform(image) if self.transform else image), self.samples[index].label


def load_rgb(path: Path) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


def scan_image_folder(root: Path) -> tuple[list[str], list[Sample], int]:
    """(class names, readable samples, number of skipped files) for an image folder."""
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a directory")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    classes = [d.name for d in class_dirs if any(_image_files(d))]
    if classes:
        candidates = [(p, i) for i, name in enumerate(classes) for p in _image_files(root / name)]
    else:
        candidates = [(p, -1) for p in _image_files(root)]
    samples, bad = [], []
    for path, label in candidates:
        (samples.append(Sample(path, label)) if _readable(path) else bad.append(path))
    if bad:
        shown = ", ".join(str(p) for p in bad[:5])
        logger.warning("skipped %d unreadable image(s) in %s: %s%s", len(bad), root, shown,
                       " ..." if len(bad) > 5 else "")
    if not samples:
        raise DataError(
            f"{root} holds no readable image ({len(bad)} file(s) skipped as unreadable; "
            f"looked for {', '.join(IMAGE_EXTENSIONS)})"
        )
    return classes, samples, len(bad)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _readable(path: Path) -> bool:
    try:
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return False
    return True
