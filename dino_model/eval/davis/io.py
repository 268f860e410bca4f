"""Reading and writing the DAVIS on-disk layout: sequence lists, frames, and indexed mask PNGs.

DAVIS 2017 (Pont-Tuset et al. 2017) stores `JPEGImages/<res>/<seq>/*.jpg`, palette PNGs
`Annotations/<res>/<seq>/*.png` whose pixel values are object ids (0 background, 255 void) and
`ImageSets/2017/<split>.txt`. DAVIS 2016 (Perazzi et al. 2016) stores one object per sequence as
grayscale PNGs with values {0, 255}; the 2017 tools would read 255 as void and find no object, so
such masks are read here as object id 1. Results are written as palette PNGs with the standard
PASCAL VOC / DAVIS colour map, generated here rather than downloaded as the DINO script does.
Every frame and mask is opened through the project's pixel cap (data/pixel_cap.py; OpenCV's own
limit is 1 Gpx): a sequence cannot skip a frame, so one over the cap is a DataError naming it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from dino_model.data.folders import required_image
from dino_model.errors import DataError
from dino_model.eval.davis.config import MASK_FORMATS

logger = logging.getLogger(__name__)

VOID_ID = 255


def davis_palette() -> list[int]:
    """The 256-entry PASCAL VOC colour map DAVIS uses (index 1 = (128, 0, 0)), flattened RGB."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


_PALETTE = davis_palette()


def list_sequences(root: str | Path, *, split: str = "val", year: str = "2017") -> list[str]:
    """Sequence names listed in `ImageSets/<year>/<split>.txt`."""
    path = Path(root) / "ImageSets" / year / f"{split}.txt"
    if not path.is_file():
        raise DataError(
            f"{path} does not exist; a DAVIS root holds ImageSets/{year}/{split}.txt "
            "(or name the sequences explicitly)"
        )
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise DataError(f"{path} lists no sequence")
    return names


def frame_paths(root: str | Path, sequence: str, *, resolution: str = "480p") -> list[Path]:
    """Sorted JPEG frames of one sequence."""
    folder = Path(root) / "JPEGImages" / resolution / sequence
    frames = sorted(folder.glob("*.jpg")) if folder.is_dir() else []
    if not frames:
        raise DataError(f"no *.jpg frame in {folder}; expected the DAVIS layout JPEGImages/{resolution}/<sequence>/")
    return frames


def annotation_paths(root: str | Path, sequence: str, *, resolution: str = "480p",
                     annotations: str = "Annotations") -> list[Path]:
    """Sorted PNG annotations of one sequence (only the first is needed for propagation)."""
    folder = Path(root) / annotations / resolution / sequence
    masks = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if not masks:
        raise DataError(f"no *.png annotation in {folder}; expected {annotations}/{resolution}/<sequence>/")
    return masks


def read_mask(path: str | Path, *, mask_format: str = "auto") -> np.ndarray:
    """Object ids (H, W) uint8 of one annotation PNG, with void (255) set to background.

    Args:
        path: a palette PNG (DAVIS 2017) or a grayscale {0, 255} PNG (DAVIS 2016).
        mask_format: "2017" reads pixel values as ids; "2016" maps every non-zero pixel to id 1;
            "auto" treats palette images as 2017 and grayscale images holding only {0, 255} as 2016.
    """
    if mask_format not in MASK_FORMATS:
        raise DataError(f"mask_format={mask_format!r} is not one of {', '.join(MASK_FORMATS)}")
    with required_image(Path(path)) as img:
        mode = img.mode
        if mode not in ("P", "L", "1"):
            raise DataError(f"{path} is a mode {mode!r} image; DAVIS masks are palette (P) or grayscale (L) PNGs")
        values = np.array(img)
    values = values.astype(np.uint8) * (255 if mode == "1" else 1)
    binary_2016 = mask_format == "2016" or (
        mask_format == "auto" and mode != "P" and np.isin(values, (0, 255)).all()
    )
    if binary_2016:
        return (values != 0).astype(np.uint8)
    return np.where(values == VOID_ID, 0, values).astype(np.uint8)


def read_frame(path: str | Path) -> np.ndarray:
    """RGB frame (H, W, 3) uint8, decoded by OpenCV as the official reader does (its JPEG decoder).

    PIL reads the header first, so a frame over the pixel cap is refused before OpenCV decodes it.
    """
    with required_image(Path(path)):
        pass
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"cannot read frame {path}: missing or not an image OpenCV can decode")
    return np.ascontiguousarray(img[:, :, ::-1])


def write_indexed_png(path: str | Path, labels: np.ndarray) -> Path:
    """Save an (H, W) uint8 label map as a palette PNG with the DAVIS colour map."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    img = Image.frombytes("P", (labels.shape[1], labels.shape[0]), labels.tobytes())
    img.putpalette(_PALETTE)
    img.save(path)
    return path
