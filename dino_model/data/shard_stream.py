"""Training images streamed from tar shards: the sharded counterpart of SeededMultiCropDataset.

Each rank and DataLoader worker reads the runs of shards that shard_plan.py assigns it, front to
back, so a shard is one sequential read (local disk, object store or DVC remote alike). Packed
shards follow the folder's sorted order, which for class folders means a shard holds one or two
classes; to mix classes within a batch a worker reads OPEN_SHARDS of its runs at once, drawing
from them at random, through a SHUFFLE_BUFFER-sample buffer. Those draws come from a generator
seeded by (seed, epoch, rank, worker), so an epoch's order is fixed by (seed, epoch, batch size,
world size, workers) and a run resumed at an epoch reads what an uninterrupted one would.

An image's crops are seeded by (seed, epoch, global index), the index being its sample key (its
position in the folder scan's order), exactly as the folder source seeds them: the same image
gets the same crops whichever rank or worker reads it, and whether training reads the folder or
its shards.

A member that no longer decodes, or whose header declares more pixels than the cap (pixel_cap.py,
checked before decoding), is replaced, like an unreadable file in the folder source, by the
next readable image of the same worker (the last one at the end of its runs), keeping its own
index's seed, so batch shapes and step counts stay as planned; each such item reports one skip.
A shard's sha256 is checked whenever a worker reads it to its end (every shard that a worker
does not start or stop inside); a mismatch stops training with a DataError naming the shard.
"""

from __future__ import annotations

import hashlib
import logging
import random
import tarfile
from collections.abc import Callable, Iterable, Iterator
from io import BytesIO
from typing import IO, Any

from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dino_model.data.encoded import portable_bytes
from dino_model.data.folders import IMAGE_EXTENSIONS, UNREADABLE_ERRORS, unreadable_reason
from dino_model.data.loaders import MAX_CONSECUTIVE_UNREADABLE
from dino_model.data.pixel_cap import open_image
from dino_model.data.seeding import item_seed, seeded_crops
from dino_model.data.shard_location import ShardLocation
from dino_model.data.shard_plan import Segment, reader_segments, steps_per_epoch
from dino_model.data.shards import ShardIndex, sample_index
from dino_model.errors import DataError

logger = logging.getLogger(__name__)

OPEN_SHARDS = 4  # runs of shards a worker interleaves
SHUFFLE_BUFFER = 256  # encoded samples a worker holds to shuffle (about 28 MB at ImageNet's 110 KB a JPEG)
_IMAGE_SUFFIXES = tuple(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)

Sample = tuple[int, dict[str, Any]]  # (global index, webdataset sample: suffix -> bytes)


class ShardImages:
    """A folder of shards opened for training: its index, checked against the shards it lists."""

    def __init__(self, root: str) -> None:
        self.location = ShardLocation(root)
        self.index: ShardIndex = self.location.read_index()
        self.location.check_shards(self.index)

    def __len__(self) -> int:
        return self.index.total

    @property
    def n_skipped(self) -> int:
        return self.index.skipped

    @property
    def classes(self) -> list[str]:
        return self.index.classes


class ShardMultiCropDataset(IterableDataset):
    """Streams this rank's share of the shards; item = ([crop tensors], label, members skipped)."""

    def __init__(self, images: ShardImages, transform: Callable[[Image.Image], Any], seed: int, *,
                 batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        self.images, self.transform, self.seed = images, transform, seed
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return steps_per_epoch(len(self.images), self.batch_size, self.world_size) * self.batch_size

    def __iter__(self) -> Iterator[tuple[Any, int, int]]:
        for index, image, label, skipped in readable(self.samples()):
            crops = seeded_crops(self.transform, image, seed=self.seed, epoch=self.epoch, index=index)
            yield crops, label, skipped

    def samples(self) -> Iterator[Sample]:
        """This (rank, DataLoader worker)'s samples of the epoch, in reading order."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        segments = reader_segments(self.images.index.counts, seed=self.seed, epoch=self.epoch,
                                   batch_size=self.batch_size, rank=self.rank, world_size=self.world_size,
                                   worker=worker, num_workers=workers)
        rng = random.Random(f"dino-shard-mix/{self.seed}/{self.epoch}/{self.rank}/{worker}")
        return mixed([read_segment(self.images, s) for s in segments], rng)


class ShardEncodedDataset(ShardMultiCropDataset):
    """The same stream, item = ({"encoded": bytes, "seed", "path"}, label, 0), for crops.backend=gpu.

    Nothing is decoded here: the training device decodes, and replaces an image that does not decode
    by the next one of its batch (gpu_crops.GpuMultiCrop), counting it as skipped.
    """

    def __init__(self, images: ShardImages, seed: int, *, batch_size: int, rank: int = 0,
                 world_size: int = 1) -> None:
        super().__init__(images, lambda image: image, seed, batch_size=batch_size, rank=rank, world_size=world_size)

    def __iter__(self) -> Iterator[tuple[dict[str, Any], int, int]]:
        for index, sample in self.samples():
            suffix = next((s for s in _IMAGE_SUFFIXES if s in sample), None)
            name = f"{sample.get('__url__')}:{sample.get('__key__')}.{suffix}"
            try:
                encoded = portable_bytes(sample[suffix]) if suffix else b""
            except UNREADABLE_ERRORS:
                encoded = sample[suffix]  # the device refuses it too (header, pixel cap or decoder) and says why
            label = int(sample["cls"]) if "cls" in sample else -1
            yield {"encoded": encoded, "seed": item_seed(self.seed, self.epoch, index), "path": name}, label, 0


def build_shard_loader(dataset: ShardMultiCropDataset, *, num_workers: int = 0,
                       pin_memory: bool = False) -> DataLoader:
    """Batches of this rank's stream; every rank gets len(loader) steps. Call dataset.set_epoch each epoch."""
    needed = dataset.batch_size * dataset.world_size
    if len(dataset.images) < needed:
        raise DataError(f"the shards under {dataset.images.location} hold {len(dataset.images)} images, fewer than "
                        f"one global batch ({dataset.batch_size} x {dataset.world_size} processes); lower "
                        f"train.batch_size")
    return DataLoader(dataset, batch_size=dataset.batch_size, num_workers=num_workers, pin_memory=pin_memory,
                      drop_last=True, persistent_workers=False)


def read_segment(images: ShardImages, segment: Segment) -> Iterator[Sample]:
    """The samples of one run, read front to back; checks the shard's sha256 when read to its end."""
    shard = images.index.shards[segment.shard]
    position = -1
    with images.location.open(shard.name) as raw:
        stream = _HashingReader(raw)
        samples = _tar_samples(stream, shard.name)
        for position, sample in enumerate(samples):
            if position >= segment.stop:
                break
            if position >= segment.start:
                yield sample_index(sample, shard.name), sample
        if position + 1 < segment.stop:
            raise DataError(f"shard {shard.name} under {images.location} holds {position + 1} samples, "
                            f"{shard.count} listed in its index; pack the folder again")
        if segment.stop == segment.count:
            _check_whole_shard(samples, stream, shard.name, shard.sha256, images)


def mixed(runs: list[Iterator[Sample]], rng: random.Random, *, open_at_once: int = OPEN_SHARDS,
          buffer_size: int = SHUFFLE_BUFFER) -> Iterator[Sample]:
    """Every sample of `runs` once: up to `open_at_once` runs drawn at random, through a shuffle buffer."""
    waiting, active, buffer = iter(runs), [], []
    while True:
        while len(active) < open_at_once and (run := next(waiting, None)) is not None:
            active.append(run)
        if not active:
            break
        pick = rng.randrange(len(active))
        item = next(active[pick], None)
        if item is None:
            active.pop(pick)
        elif len(buffer) < buffer_size:
            buffer.append(item)
        else:
            slot = rng.randrange(buffer_size)
            buffer[slot], item = item, buffer[slot]
            yield item
    rng.shuffle(buffer)
    yield from buffer


def readable(samples: Iterable[Sample]) -> Iterator[tuple[int, Image.Image, int, int]]:
    """(index, image, label, skipped): an undecodable sample takes the next readable image of the stream."""
    waiting: list[int] = []  # indices of undecodable samples, waiting for the next readable image
    last: tuple[Image.Image, int] | None = None
    for index, sample in samples:
        try:
            image, label = decode(sample)
        except UNREADABLE_ERRORS as exc:
            logger.warning("skipped sample %s of %s: %s", sample.get("__key__"), sample.get("__url__"),
                           unreadable_reason(exc))
            waiting.append(index)
            if len(waiting) >= MAX_CONSECUTIVE_UNREADABLE:
                raise DataError(f"{len(waiting)} samples in a row cannot be decoded (last: {sample.get('__key__')} "
                                f"of {sample.get('__url__')}); are the shards damaged?") from None
            continue
        last = image, label
        yield from ((i, image, label, 1) for i in waiting)
        waiting = []
        yield index, image, label, 0
    if waiting and last is None:
        raise DataError(f"none of the {len(waiting)} samples read by this worker can be decoded; "
                        f"are the shards damaged?")
    yield from ((i, *last, 1) for i in waiting)  # type: ignore[misc]


def decode(sample: dict[str, Any]) -> tuple[Image.Image, int]:
    """(RGB image, label or -1) of a sample; UNREADABLE_ERRORS when it holds no decodable image within the cap."""
    suffix = next((s for s in _IMAGE_SUFFIXES if s in sample), None)
    if suffix is None:
        raise ValueError(f"no image member (looked for .{', .'.join(_IMAGE_SUFFIXES)})")
    label = int(sample["cls"]) if "cls" in sample else -1
    with open_image(BytesIO(sample[suffix])) as img:
        return img.convert("RGB"), label


def _tar_samples(stream: IO[bytes], name: str) -> Iterator[dict[str, Any]]:
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    files = ({**f, "__url__": name} for f in tar_file_iterator(stream))
    try:
        yield from group_by_keys(files)
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        raise DataError(f"shard {name} is not a readable tar file: {exc}") from None


def _check_whole_shard(samples: Iterator[dict[str, Any]], stream: _HashingReader, name: str, sha256: str,
                       images: ShardImages) -> None:
    for _ in samples:  # members past the indexed count, if any, change the hash too
        pass
    stream.drain()
    if stream.hexdigest() != sha256:
        raise DataError(f"shard {name} under {images.location} does not match its index: sha256 "
                        f"{stream.hexdigest()}, expected {sha256}; it changed after packing")


class _HashingReader:
    """A read-only stream that hashes what passes through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw, self.digest = raw, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.digest.update(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass

    def hexdigest(self) -> str:
        return self.digest.hexdigest()

