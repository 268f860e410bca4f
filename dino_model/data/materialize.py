"""Real image data sets that ship inside installed packages, written out as image folders.

Nothing can be downloaded at run time, so the demo and the tests use scikit-learn's digits
(1,797 labelled 8x8 scans, upscaled) and scikit-image's labelled faces / non-faces and sample
photographs. Splits are stratified with a fixed seed, so every machine writes the same files.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from dino_model.errors import DataError

logger = logging.getLogger(__name__)


def _digits() -> tuple[np.ndarray, np.ndarray, list[str]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images / 16.0 * 255.0).round().astype(np.uint8)
    return images, d.target, [str(i) for i in range(10)]


def _faces() -> tuple[np.ndarray, np.ndarray, list[str]]:
    from skimage.data import lfw_subset

    images = (lfw_subset() * 255.0).round().astype(np.uint8)
    labels = np.array([0] * 100 + [1] * 100)  # the first 100 are faces, the rest are not
    return images, labels, ["face", "nonface"]


def _samples() -> tuple[np.ndarray, np.ndarray, list[str]]:
    import skimage.data as sd

    names = ["astronaut", "chelsea", "coffee", "rocket", "cat", "camera", "coins", "moon", "text", "page"]
    images = [np.asarray(getattr(sd, n)()) for n in names]
    return images, np.full(len(images), -1), []  # type: ignore[return-value]


SOURCES: dict[str, tuple[Callable, int]] = {
    "digits": (_digits, 32),  # upscaled to 32 x 32 px
    "faces": (_faces, 32),
    "samples": (_samples, 0),  # kept at full size, unlabelled (flat folder)
}


def materialize(name: str, root: str | Path, *, val_fraction: float = 0.2, seed: int = 0) -> Path:
    """Write data set `name` under root/train and root/val (class folders); returns root."""
    if name not in SOURCES:
        raise DataError(f"unknown packaged data set {name!r}; known: {', '.join(SOURCES)}")
    load, size = SOURCES[name]
    images, labels, classes = load()
    root = Path(root)
    if not classes:
        _write_flat(images, root / "train", size)
        return root
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    train_idx, val_idx = train_test_split(idx, test_size=val_fraction, stratify=labels, random_state=seed)
    for split, chosen in (("train", np.sort(train_idx)), ("val", np.sort(val_idx))):
        for i in chosen:
            folder = root / split / classes[labels[i]]
            folder.mkdir(parents=True, exist_ok=True)
            _to_image(images[i], size).save(folder / f"{i:05d}.png")
    logger.info("materialised %s: %d train / %d val images under %s", name, len(train_idx), len(val_idx), root)
    return root


def _write_flat(images: list[np.ndarray], folder: Path, size: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        _to_image(img, size).save(folder / f"{i:05d}.png")


def _to_image(array: np.ndarray, size: int) -> Image.Image:
    img = Image.fromarray(array).convert("RGB")
    return img.resize((size, size), Image.Resampling.BICUBIC) if size else img
