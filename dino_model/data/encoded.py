"""Training items as encoded image bytes, for the multi-crop on the training device (crops.backend=gpu).

The loader workers then only read files: decoding and cropping move to the device (gpu_crops.py).
The items keep `SeededMultiCropDataset`'s contract: the same per-image seed from (seed, epoch,
index), and a file that cannot be read any more is replaced by the next readable one (counted as
skipped). JPEG and PNG bytes pass through untouched; another format (BMP, TIFF, WebP, ...) is
decoded with PIL in the worker and passed on as an uncompressed PNG, since the device decoders
read JPEG (and the CPU one PNG) only. Either way the header is read first and an image over the
pixel cap (pixel_cap.py) is refused undecoded, so it is skipped and counted like an unreadable file.
"""

from __future__ import annotations

import io
from typing import Any

from dino_model.data.datasets import ImageFolderDataset
from dino_model.data.loaders import SeededMultiCropDataset
from dino_model.data.pixel_cap import open_image
from dino_model.data.seeding import item_seed

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def portable_bytes(data: bytes) -> bytes:
    """`data` when it is a JPEG or PNG, else the image re-encoded as PNG.

    Raises PIL's errors when the header is unreadable, ImageTooLargeError when it is over the pixel cap.
    """
    with open_image(io.BytesIO(data)) as img:
        if data.startswith(JPEG_MAGIC) or data.startswith(PNG_MAGIC):
            return data
        rgb = img.convert("RGB")
    out = io.BytesIO()
    rgb.save(out, format="PNG", compress_level=0)
    return out.getvalue()


class EncodedImages:
    """An image folder whose items are (file bytes, label) instead of decoded images."""

    def __init__(self, images: ImageFolderDataset) -> None:
        self.images = images
        self.root, self.samples = images.root, images.samples

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[bytes, int]:
        sample = self.samples[index]
        return portable_bytes(sample.path.read_bytes()), sample.label


class SeededEncodedDataset(SeededMultiCropDataset):
    """Item = ({"encoded": bytes, "seed": int, "path": str}, label, files skipped); see GpuMultiCrop.

    The dict collates into a batch of byte strings, seeds and paths with the default collate.
    """

    def __init__(self, images: ImageFolderDataset, seed: int) -> None:
        super().__init__(EncodedImages(images), transform=None, seed=seed)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[dict[str, Any], int, int]:
        encoded, label, skipped = self._readable_item(index)
        path = self.images.samples[(index + skipped) % len(self.images)].path
        item = {"encoded": encoded, "seed": item_seed(self.seed, self.epoch, index), "path": str(path)}
        return item, label, skipped
