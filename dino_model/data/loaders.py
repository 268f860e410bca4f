"""Training data loader whose every random choice is a function of (seed, epoch, index).

Each image's crops are drawn from generators seeded by its index, and the shuffle by the epoch,
so the same image gets the same crops whichever process or worker loads it. That is what makes
N processes with batch B equal one process with batch N*B, and a resumed run equal an
uninterrupted one.
"""

from __future__ import annotations

import random
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from dino_model.data.datasets import ImageFolderDataset
from dino_model.data.transforms import MultiCropTransform
from dino_model.errors import DataError


class SeededMultiCropDataset(Dataset):
    """Wraps an image folder; item = ([crop tensors], label), reproducible per (seed, epoch, index)."""

    def __init__(self, images: ImageFolderDataset, transform: MultiCropTransform, seed: int) -> None:
        self.images, self.transform, self.seed = images, transform, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[list[torch.Tensor], int]:
        image, label = self.images[index]
        item_seed = hash((self.seed, self.epoch, index)) & 0x7FFF_FFFF
        py_state = random.getstate()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(item_seed)
                random.seed(item_seed)
                crops = self.transform(image)
        finally:
            random.setstate(py_state)
        return crops, label


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


def set_epoch(loader_parts: tuple[Any, ...], epoch: int) -> None:
    for part in loader_parts:
        part.set_epoch(epoch)
