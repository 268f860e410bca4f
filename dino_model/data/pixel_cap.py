"""One cap on the pixels of every image the project decodes, checked from the header before decoding.

PIL refuses only images that declare more than twice `Image.MAX_IMAGE_PIXELS` (about 179 Mpx). Below
that a single-colour PNG of 12000 x 12000 pixels (a few dozen KB on disk) decodes, and costs from
0.4 GB (the RGB pixels) to about 2 GB (with the conversions) of memory in each process that decodes
it: every DataLoader worker of every rank, `dino-mlops infer`, index building. DINO trains on
224-pixel crops and serves 224-pixel inputs, so no useful image comes near that: the cap here,
DEFAULT_MAX_IMAGE_PIXELS (64 Mpx, an 8000 x 8000 image, above the 12 to 50 Mpx of camera
photographs), is far below PIL's limit.

Every image open goes through `open_image` (PIL's `Image.open` reads the header only; the size is
checked before anything calls `.load()` or `.convert()`), and encoded bytes handed to torchvision or
nvJPEG pass `check_encoded` first. An image over the cap raises ImageTooLargeError, a subclass of
PIL's DecompressionBombError, so every place that already skips, logs and counts unreadable images
(folders.UNREADABLE_ERRORS, folders.unreadable_reason) treats it the same way, with its size in the
reason. PIL's own limit stays in force above the cap as a backstop.

The cap belongs to the machine (memory per decoding process), not to a model or a run's results, so
it is one environment variable, DINO_MAX_IMAGE_PIXELS (a positive integer), read where images are
opened, rather than a training config key: it reaches training ranks and their DataLoader workers
(forked or spawned, they inherit the environment), `dino-mlops infer`, `index build`, evaluation,
shard packing and the client-only install alike, and changing it never changes a checkpoint.
"""

from __future__ import annotations

import io
import os
from functools import lru_cache
from pathlib import Path
from typing import IO

from PIL import Image

from dino_model.errors import ConfigError

PIXEL_CAP_ENV = "DINO_MAX_IMAGE_PIXELS"
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000


class ImageTooLargeError(Image.DecompressionBombError):
    """An image whose header declares more pixels than the cap; raised before any pixel is decoded."""

    def __init__(self, width: int, height: int, cap: int) -> None:
        super().__init__(f"{width} x {height} = {width * height:,} pixels, over the cap of {cap:,}; "
                         f"set {PIXEL_CAP_ENV} to change it")
        self.width, self.height, self.cap = width, height, cap

    def __reduce__(self) -> tuple[type, tuple[int, int, int]]:  # survives pickling between processes
        return type(self), (self.width, self.height, self.cap)


def max_image_pixels() -> int:
    """The cap in force: DINO_MAX_IMAGE_PIXELS when set, else DEFAULT_MAX_IMAGE_PIXELS."""
    return parse_pixel_cap(os.environ.get(PIXEL_CAP_ENV, ""))


@lru_cache(maxsize=8)
def parse_pixel_cap(text: str) -> int:
    """The cap that `text` spells (digits, '_' allowed: 64_000_000); blank means the default."""
    if not text.strip():
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        cap = int(text.strip())
    except ValueError:
        cap = 0
    if cap <= 0:
        raise ConfigError(f"{PIXEL_CAP_ENV}={text!r} is not a positive whole number of pixels "
                          f"(the default is {DEFAULT_MAX_IMAGE_PIXELS}, i.e. 64 Mpx)")
    return cap


def check_pixels(size: tuple[int, int]) -> None:
    """ImageTooLargeError when an image of (width, height) has more pixels than the cap."""
    width, height = size
    cap = max_image_pixels()
    if width * height > cap:
        raise ImageTooLargeError(width, height, cap)


def open_image(source: str | Path | IO[bytes]) -> Image.Image:
    """A PIL image with only its header read and its size within the cap (use it as a context manager).

    Raises PIL's errors for a file that is not an image, and ImageTooLargeError before decoding one
    that is too large.
    """
    image = Image.open(source)
    try:
        check_pixels(image.size)
    except ImageTooLargeError:
        image.close()
        raise
    return image


def check_encoded(data: bytes) -> None:
    """Encoded image bytes (for a decoder other than PIL) whose header PIL reads and finds within the cap."""
    with open_image(io.BytesIO(data)):
        pass
