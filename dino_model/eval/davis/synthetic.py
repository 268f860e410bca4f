"""A generated video in the DAVIS 2017 layout, with exact masks, for tests and demos.

DAVIS itself cannot be downloaded where this platform is tested, so this module writes a short
sequence of textured objects moving over a textured background: a striped red disc (object 1) and
a checkered blue rectangle (object 2) that passes in front of part of the background's texture.
Frames are JPEGs and masks palette PNGs, exactly as in `DAVIS/JPEGImages/480p` and
`DAVIS/Annotations/480p`, plus `ImageSets/2017/val.txt`, so the whole DAVIS path (reading,
propagation, writing results, scoring) runs on it in seconds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dino_model.eval.davis.io import write_indexed_png

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyntheticObject:
    colour: tuple[int, int, int]
    start: tuple[float, float]  # centre (row, col) in the first frame, as fractions of (H, W)
    velocity: tuple[float, float]  # pixels per frame (rows, cols)
    half_size: tuple[float, float]  # half height and half width, as fractions of H
    shape: str  # disc | box


OBJECTS = (
    SyntheticObject((210, 40, 40), (0.35, 0.25), (0.6, 1.5), (0.17, 0.17), "disc"),
    SyntheticObject((40, 70, 220), (0.65, 0.75), (-0.5, -1.2), (0.14, 0.2), "box"),
)


def make_synthetic_davis(root: str | Path, *, name: str = "synthetic-shapes", n_frames: int = 16,
                         height: int = 64, width: int = 96, resolution: str = "480p", seed: int = 0) -> Path:
    """Write one generated sequence under root in the DAVIS layout; returns root.

    Object ids follow OBJECTS (1 = disc, 2 = box; the box is drawn over the disc where they meet).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    background = _background(rng, height, width)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    frames_dir = root / "JPEGImages" / resolution / name
    masks_dir = root / "Annotations" / resolution / name
    frames_dir.mkdir(parents=True, exist_ok=True)
    for t in range(n_frames):
        frame = background.copy()
        ids = np.zeros((height, width), dtype=np.uint8)
        for obj_id, obj in enumerate(OBJECTS, start=1):
            inside = _object_mask(obj, t, rows, cols, height, width)
            frame[inside] = _texture(obj, rows, cols, t)[inside]
            ids[inside] = obj_id
        noisy = frame + rng.normal(0.0, 4.0, frame.shape)
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(frames_dir / f"{t:05d}.jpg", quality=95)
        write_indexed_png(masks_dir / f"{t:05d}.png", ids)
    sets = root / "ImageSets" / "2017"
    sets.mkdir(parents=True, exist_ok=True)
    listed = (sets / "val.txt").read_text().split() if (sets / "val.txt").is_file() else []
    (sets / "val.txt").write_text("\n".join(sorted({*listed, name})) + "\n")
    logger.info("wrote synthetic DAVIS sequence %s (%d frames, %dx%d) under %s", name, n_frames, height, width, root)
    return root


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth greenish-grey texture: coarse noise upsampled bilinearly, plus faint fine grain."""
    coarse = rng.uniform(0.0, 1.0, (max(height // 8, 2), max(width // 8, 2)))
    smooth = np.array(Image.fromarray((coarse * 255).astype(np.uint8)).resize((width, height), Image.BILINEAR))
    shade = 0.6 + 0.4 * smooth[..., None] / 255.0
    base = np.array([110.0, 140.0, 100.0])
    return shade * base + rng.normal(0.0, 6.0, (height, width, 3))


def _object_mask(obj: SyntheticObject, t: int, rows: np.ndarray, cols: np.ndarray,
                 height: int, width: int) -> np.ndarray:
    cy = obj.start[0] * height + obj.velocity[0] * t
    cx = obj.start[1] * width + obj.velocity[1] * t
    hy, hx = obj.half_size[0] * height, obj.half_size[1] * height
    if obj.shape == "disc":
        return ((rows - cy) / hy) ** 2 + ((cols - cx) / hx) ** 2 <= 1.0
    return (np.abs(rows - cy) <= hy) & (np.abs(cols - cx) <= hx)


def _texture(obj: SyntheticObject, rows: np.ndarray, cols: np.ndarray, t: int) -> np.ndarray:
    """The object's colour modulated by stripes (disc) or a checkerboard (box) that move with it."""
    shift_r, shift_c = obj.velocity[0] * t, obj.velocity[1] * t
    r, c = rows - shift_r, cols - shift_c
    if obj.shape == "disc":
        pattern = 0.5 + 0.5 * np.sin((r + c) / 2.0)
    else:
        pattern = ((np.floor(r / 4) + np.floor(c / 4)) % 2).astype(np.float64)
    return np.asarray(obj.colour, dtype=np.float64) * (0.75 + 0.25 * pattern[..., None])
