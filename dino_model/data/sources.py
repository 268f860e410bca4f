"""The training data source for `data.root`: an image folder, or a folder (or URL) of tar shards.

`data.extra_roots` adds image folders read beside an image-folder root (the data flywheel's
`captured/` images, any layout, labels unused): the training images are their concatenation. Shards
do not combine with them (a stream plans its shards per rank; a folder has no such plan), so that
pairing is refused rather than half-supported.

fit() asks for (images, dataset, loader, epoch setter) and does not care which source it gets:
both seed every image's crops by (seed, epoch, index), skip unreadable images (and those over the
pixel cap, pixel_cap.py) without changing batch shapes, and give every rank the same number of steps.
The cap in force is read and logged here, so a malformed DINO_MAX_IMAGE_PIXELS stops the run before
any worker starts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from dino_model.data.datasets import ImageFolderDataset, ImageFolders
from dino_model.data.encoded import SeededEncodedDataset
from dino_model.data.folders import folder_classes
from dino_model.data.loaders import SeededMultiCropDataset, build_train_loader
from dino_model.data.pixel_cap import PIXEL_CAP_ENV, max_image_pixels
from dino_model.data.shard_eval import ShardLabelledImages
from dino_model.data.shard_location import ShardLocation, is_shard_root
from dino_model.data.shard_stream import ShardEncodedDataset, ShardImages, ShardMultiCropDataset, build_shard_loader
from dino_model.errors import DataError

logger = logging.getLogger(__name__)


def build_train_data(root: str, transform: Callable[[Any], Any], *, seed: int, batch_size: int, rank: int,
                     world_size: int, num_workers: int = 0, pin_memory: bool = False,
                     open_folder: Callable[[str], ImageFolderDataset] = ImageFolderDataset,
                     encoded: bool = False, extra_roots: Sequence[str] = ()) -> tuple[Any, Any, DataLoader, Any]:
    """(images, dataset, loader, sampler); call set_epoch on dataset and sampler before each epoch.

    `images` has len() (images available) and n_skipped (unreadable at scan or pack time).
    `open_folder` builds the image folder's Dataset (the caller's seam, e.g. for files that vanish).
    With `encoded` (crops.backend=gpu) the items are the files' bytes and `transform` is not used:
    the training loop builds the crops on its device (gpu_crops.GpuMultiCrop).
    `extra_roots`: image folders trained on beside the image folder `root` (open_training_images).
    """
    logger.debug("images over %s pixels are skipped (%s)", f"{max_image_pixels():,}", PIXEL_CAP_ENV)
    if is_shard_root(root) and not extra_roots:
        shards = ShardImages(root)
        stream = (ShardEncodedDataset(shards, seed, batch_size=batch_size, rank=rank, world_size=world_size)
                  if encoded else ShardMultiCropDataset(shards, transform, seed, batch_size=batch_size, rank=rank,
                                                        world_size=world_size))
        return shards, stream, build_shard_loader(stream, num_workers=num_workers, pin_memory=pin_memory), stream
    images = open_training_images(root, extra_roots, open_folder)
    dataset = SeededEncodedDataset(images, seed) if encoded else SeededMultiCropDataset(images, transform, seed)
    loader, sampler = build_train_loader(dataset, batch_size=batch_size, rank=rank, world_size=world_size,
                                         seed=seed, num_workers=num_workers, pin_memory=pin_memory)
    return images, dataset, loader, sampler


def open_training_images(root: str, extra_roots: Sequence[str],
                         open_folder: Callable[[str], ImageFolderDataset] = ImageFolderDataset
                         ) -> ImageFolderDataset | ImageFolders:
    """The image folder `root`, or with `extra_roots` every folder's images in order; logs what each gave.

    Raises:
        DataError: a root of shards combined with extra roots, or an extra folder that does not exist.
    """
    if not extra_roots:
        return open_folder(root)
    shards = [r for r in (root, *extra_roots) if is_shard_root(r)]
    if shards:
        raise DataError(f"data.extra_roots only combine with image folders, and {', '.join(shards)} holds tar "
                        "shards: train on the shards alone, or on the image folders they were packed from")
    missing = [r for r in extra_roots if not Path(r).is_dir()]
    if missing:
        raise DataError(f"data.extra_roots names {', '.join(missing)}, which is not a folder")
    folders = [open_folder(r) for r in (root, *extra_roots)]
    for folder in folders:
        logger.info("training images from %s: %d (%d unreadable skipped)", folder.root, len(folder), folder.n_skipped)
    return ImageFolders(folders)


def labelled_images(root: str, transform: Callable[[Any], Any]) -> ImageFolderDataset | ShardLabelledImages:
    """Every readable image under `root` (a folder, or a folder or URL of shards) as (transform(image), label).

    Both have `classes` and len(); read them with shuffle=False (the shards stream).
    """
    return ShardLabelledImages(root, transform) if is_shard_root(root) else ImageFolderDataset(root, transform)


def labelled_classes(root: str) -> list[str]:
    """The class names of `root` (a folder, or a folder or URL of shards), read without decoding an image."""
    return ShardLocation(root).read_index().classes if is_shard_root(root) else folder_classes(Path(root))
