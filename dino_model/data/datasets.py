"""Image folders as a torch Dataset: class sub-folders when labels exist, flat when they do not.

Scanning, labels and skipping unreadable files live in folders.py (torch-free, for the client-only
install); this module adds the Dataset the training and evaluation loaders read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from dino_model.data.folders import (  # noqa: F401  (re-exported: the names callers import from here)
    IMAGE_EXTENSIONS,
    UNREADABLE_ERRORS,
    FolderScan,
    Sample,
    load_rgb,
    scan_folder,
    unreadable_reason,
)


class ImageFolderDataset(Dataset):
    """Readable images below `root`; item = (transform(image), label)."""

    def __init__(self, root: str | Path, transform: Callable[[Image.Image], Any] | None = None) -> None:
        self.root = Path(root)
        self.transform = transform
        scan = scan_folder(self.root)
        self.classes, self.samples, self.skipped = scan.classes, scan.samples, scan.skipped

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    def load(self, index: int) -> Image.Image:
        return load_rgb(self.samples[index].path)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self.load(index)
        return (self.transform(image) if self.transform else image), self.samples[index].label


def scan_image_folder(root: Path) -> tuple[list[str], list[Sample], int]:
    """(class names, readable samples, number of skipped files) for an image folder."""
    scan = scan_folder(root)
    return scan.classes, scan.samples, len(scan.skipped)


class ImageFolders:
    """Several image folders read as one, in order: what training sees when `data.extra_roots` are set.

    The same surface as ImageFolderDataset (len(), n_skipped, samples, load, items) over the
    concatenated samples. Labels stay each folder's own scan and mean nothing across folders: DINO
    trains without them, and a folder of captured images (`<day>/` sub-folders) has none to give.
    """

    def __init__(self, folders: Sequence[ImageFolderDataset]) -> None:
        self.folders = list(folders)
        self.root = self.folders[0].root  # named in the loaders' messages
        self.transform = self.folders[0].transform
        self.samples = [s for f in self.folders for s in f.samples]
        self.skipped = [s for f in self.folders for s in f.skipped]

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    def load(self, index: int) -> Image.Image:
        return load_rgb(self.samples[index].path)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self.load(index)
        return (self.transform(image) if self.transform else image), self.samples[index].label
