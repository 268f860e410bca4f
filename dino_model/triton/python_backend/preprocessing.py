"""The evaluation preprocessing (decode, resize, centre crop, normalise) as one self-contained file.

Two places run it and must agree bit for bit: the client (`dino-mlops infer`, dino_model/serving/
images.py imports it from here) and the server's image entry point, whose Python-backend step
(preprocess_model.py) ships this very file in its version folder. Triton's stub imports it without
the project installed, so it depends on numpy and PIL only.

The steps are `eval_transform`'s (bicubic resize of the shorter side, centre crop, /255,
normalisation), written with PIL and numpy following torchvision's arithmetic on PIL images (sizes,
crop offsets, zero padding, float32 division); tests/dino_model/serving/test_client_preprocessing.py
holds the result equal to `eval_transform`. Encoded bytes are decoded with the project's pixel cap
(dino_model/data/pixel_cap.py, DINO_MAX_IMAGE_PIXELS) checked from the header before decoding; the
cap's default and variable name are repeated here (a test pins them to pixel_cap's).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

PIXEL_CAP_ENV = "DINO_MAX_IMAGE_PIXELS"
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000
# what PIL raises for bytes that are not a decodable image (data/folders.py's UNREADABLE_ERRORS)
DECODE_ERRORS = (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError)


class UnreadableImageError(ValueError):
    """Encoded bytes that are not an image this step decodes, or an image over the pixel cap."""


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


def pixel_cap_from_environment(environ: dict[str, str] | None = None) -> int:
    """The pixel cap in force where this runs: DINO_MAX_IMAGE_PIXELS, else the default (pixel_cap's rule)."""
    text = (os.environ if environ is None else environ).get(PIXEL_CAP_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        cap = int(text)
    except ValueError:
        cap = 0
    if cap <= 0:
        raise ValueError(f"{PIXEL_CAP_ENV}={text!r} is not a positive whole number of pixels "
                         f"(the default is {DEFAULT_MAX_IMAGE_PIXELS}, i.e. 64 Mpx)")
    return cap


def _check_size(image: Image.Image, max_pixels: int) -> None:
    width, height = image.size
    if width * height > max_pixels:
        raise UnreadableImageError(f"image too large to decode safely ({width} x {height} = {width * height:,} "
                                   f"pixels, over the cap of {max_pixels:,}; set {PIXEL_CAP_ENV} to change it)")


def decode_rgb(data: bytes, max_pixels: int) -> Image.Image:
    """Encoded image bytes (JPEG, PNG, WebP, any format PIL reads) as an RGB image.

    Raises:
        UnreadableImageError: the bytes are not a decodable image, or the header declares more than
            `max_pixels` pixels (checked before any pixel is decoded).
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            _check_size(image, max_pixels)
            return image.convert("RGB")
    except DECODE_ERRORS as exc:
        if isinstance(exc, UnreadableImageError):
            raise
        raise UnreadableImageError(f"not a readable image: {exc}") from None


def check_header(data: bytes, max_pixels: int) -> None:
    """UnreadableImageError unless the bytes start with an image header PIL reads, within the pixel cap
    (nothing is decoded: for a decoder elsewhere, such as DALI's)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            _check_size(image, max_pixels)
    except DECODE_ERRORS as exc:
        if isinstance(exc, UnreadableImageError):
            raise
        raise UnreadableImageError(f"not a readable image: {exc}") from None


def padded_rows(items: list[bytes], max_pixels: int) -> np.ndarray:
    """(len(items), longest) uint8: each encoded image's header checked, then its bytes zero-padded to one row.

    Raises:
        UnreadableImageError: naming every item (by index) whose header is unreadable or over the cap.
    """
    problems = []
    for index, data in enumerate(items):
        try:
            check_header(bytes(data), max_pixels)
        except UnreadableImageError as exc:
            problems.append(f"item {index}: {exc}")
    if problems:
        raise UnreadableImageError(f"{len(problems)} of {len(items)} image(s) cannot be used: {'; '.join(problems)}")
    rows = np.zeros((len(items), max(len(data) for data in items)), np.uint8)
    for row, data in zip(rows, items, strict=True):
        row[: len(data)] = np.frombuffer(bytes(data), np.uint8)
    return rows


def preprocess_encoded(items: list[bytes], transform: Preprocess, max_pixels: int) -> np.ndarray:
    """(len(items), 3, S, S) float32 model input of encoded images.

    Raises:
        UnreadableImageError: naming every item (by index) that cannot be used, and why.
    """
    arrays, problems = [], []
    for index, data in enumerate(items):
        try:
            arrays.append(transform(decode_rgb(bytes(data), max_pixels)))
        except UnreadableImageError as exc:
            problems.append(f"item {index}: {exc}")
    if problems:
        raise UnreadableImageError(f"{len(problems)} of {len(items)} image(s) cannot be used: {'; '.join(problems)}")
    return np.stack(arrays).astype(np.float32, copy=False)
