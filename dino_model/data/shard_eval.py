"""Labelled images of a shard folder for the frozen-feature evaluations (k-NN), read front to back.

Evaluation wants every image exactly once, with its label, in no particular order: each DataLoader
worker reads whole shards (worker k of K the shards k, k + K, ...) sequentially, so a data set
versioned as shards is evaluated without unpacking it. Members that no longer decode are skipped
and logged, as unreadable files are in a folder.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from dino_model.data.folders import UNREADABLE_ERRORS, unreadable_reason
from dino_model.data.shard_plan import Segment
from dino_model.data.shard_stream import ShardImages, decode, read_segment

logger = logging.getLogger(__name__)


class ShardLabelledImages(IterableDataset):
    """Item = (transform(image), label) for every decodable image of the shards under `root`."""

    def __init__(self, root: str, transform: Callable[[Image.Image], Any]) -> None:
        self.images, self.transform = ShardImages(root), transform

    def __len__(self) -> int:
        return len(self.images)

    @property
    def classes(self) -> list[str]:
        return self.images.classes

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        shards = self.images.index.shards
        for number in range(worker, len(shards), workers):
            whole = Segment(number, 0, shards[number].count, shards[number].count)
            for _, sample in read_segment(self.images, whole):
                try:
                    image, label = decode(sample)
                except UNREADABLE_ERRORS as exc:
                    logger.warning("skipped sample %s of %s: %s", sample.get("__key__"), shards[number].name,
                                   unreadable_reason(exc))
                    continue
                yield self.transform(image), label
