"""Training data loader whose every random choice is a function of (seed, epoch, index).

Each image's crops are drawn from generators seeded by its index, and the shuffle by the epoch,
so the same image gets the same crops whichever process or worker loads it. That is what makes
N processes with batch B equal one process with batch N*B, and a resumed run equal an
uninterrupted one.

A file that cannot be read any more (deleted, replaced or truncated under a running job) is
skipped: the item is built from the next readable image instead, with the original index's seed,
so batch shapes, step counts and the schedules stay as planned. Each item reports how many files
it skipped, and the training loop sums them into the epoch's metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from dino_model.data.datasets import UNREADABLE_ERRORS, ImageFolderDataset, unreadable_reason
from dino_model.data.seeding import seeded_crops
from dino_model.data.transforms import MultiCropTransform
from dino_model.errors import DataError, DinoError

logger = logging.getLogger(__name__)

MAX_CONSECUTIVE_UNREADABLE = 64  # more in a row means the data set itself is gone, not a few files


class SeededMultiCropDataset(Dataset):
    """Wraps an image folder; item = ([crop tensors], label, files skipped), reproducible per (seed, epoch, index)."""

    def __init__(self, images: ImageFolderDataset, transform: MultiCropTransform, seed: int) -> None:
        self.images, self.transform, self.seed = images, transform, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[list[torch.Tensor], int, int]:
        image, label, skipped = self._readable_item(index)
        crops = seeded_crops(self.transform, image, seed=self.seed, epoch=self.epoch, index=index)
        return crops, label, skipped

    def _readable_item(self, index: int) -> tuple[Any, int, int]:
        """(image, label, files skipped): the image at `index`, else the next one that still reads."""
        n = len(self.images)
        for skipped in range(min(n, MAX_CONSECUTIVE_UNREADABLE)):
            candidate = (index + skipped) % n
            try:
                image, label = self.images[candidate]
            except UNREADABLE_ERRORS as exc:
                logger.warning("skipped %s: %s", self.images.samples[candidate].path, unreadable_reason(exc))
                continue
            return image, label, skipped
        raise DataError(
            f"{min(n, MAX_CONSECUTIVE_UNREADABLE)} images in a row under {self.images.root} cannot be read any "
            f"more (first: {self.images.samples[index].path}); was the data set removed during training?"
        )


def build_train_loader(
    dataset: SeededMultiCropDataset,
    *,
    batch_size: int,
    rank: int,
    world_size: int,
    seed: int,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> tuple[DataLoader, DistributedSampler]:
    """Shuffled, distributed, drop-last loader; call `set_epoch` on both before each epoch."""
    if len(dataset) < batch_size * world_size:
        raise DataError(
            f"the data set has {len(dataset)} images, fewer than one global batch "
            f"({batch_size} x {world_size} processes); lower train.batch_size"
        )
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=True,
        persistent_workers=False,
    )
    return loader, sampler


def batches(loader: DataLoader) -> Iterator[Any]:
    """Iterate a loader; a DinoError raised in a worker process comes back as its own one-line message."""
    try:
        yield from loader
    except DinoError as exc:
        message = str(exc)
        if "Original Traceback" not in message:
            raise
        prefix = f"{type(exc).__module__}.{type(exc).__qualname__}: "
        last = [line for line in message.splitlines() if line.startswith(prefix)][-1:]
        raise type(exc)(last[0].removeprefix(prefix) if last else message) from None


def set_epoch(loader_parts: tuple[Any, ...], epoch: int) -> None:
    for part in loader_parts:
        part.set_epoch(epoch)
