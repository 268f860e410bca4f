"""Streaming shards for training: exactly once per epoch across ranks and workers, seeded crops, skips, checks."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from dino_model.data.datasets import ImageFolderDataset
from dino_model.data.loaders import SeededMultiCropDataset
from dino_model.data.shard_stream import ShardImages, ShardMultiCropDataset, build_shard_loader, mixed
from dino_model.data.shards import pack_folder
from dino_model.errors import DataError

from .shard_helpers import IdAndCrops, IdTransform, write_folder

SEED = 7


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 labelled 16 px images in 10 shards of at most 5 (the last holds 3)."""
    root = tmp_path_factory.mktemp("shard_stream")
    write_folder(root / "src", 48)
    pack_folder(root / "src", root / "shards", max_per_shard=5)
    return root


def _epoch(root: Path, *, epoch: int, world_size: int, workers: int, batch_size: int = 4,
           transform=None) -> list[list[tuple[int, int, list[torch.Tensor]]]]:
    """Per rank, the (image id, label, crops) of every item, in the order the loader yields them."""
    images = ShardImages(str(root))
    ranks = []
    for rank in range(world_size):
        dataset = ShardMultiCropDataset(images, transform or IdTransform(), SEED, batch_size=batch_size,
                                        rank=rank, world_size=world_size)
        dataset.set_epoch(epoch)
        loader = build_shard_loader(dataset, num_workers=workers)
        items = []
        for crops, labels, skipped in loader:
            assert crops[0].shape[0] == batch_size and int(skipped.sum()) == 0
            for row in range(batch_size):
                items.append((int(crops[0][row, 0]), int(labels[row]), [c[row] for c in crops[1:]]))
        assert len(items) == len(loader) * batch_size
        ranks.append(items)
    return ranks


def test_every_image_and_label_once_per_epoch_across_two_ranks_of_two_workers(shards: Path):
    ranks = _epoch(shards / "shards", epoch=0, world_size=2, workers=2)
    assert [len(r) for r in ranks] == [24, 24]  # 48 = 6 steps x 4 x 2 ranks: nothing dropped
    seen = Counter(image for rank in ranks for image, _, _ in rank)
    assert seen == Counter(range(48))
    assert all(label == image % 3 for rank in ranks for image, label, _ in rank)  # class folder c{i % 3}


def test_a_remainder_that_fills_no_global_batch_is_dropped_and_ranks_get_equal_steps(shards: Path):
    ranks = _epoch(shards / "shards", epoch=1, world_size=2, workers=2, batch_size=5)
    assert [len(r) for r in ranks] == [20, 20]  # 48 // 10 = 4 steps each; 8 images dropped
    seen = Counter(image for rank in ranks for image, _, _ in rank)
    assert len(seen) == 40 and set(seen.values()) == {1}


def test_a_resumed_epoch_reads_what_the_continuing_run_reads_and_epochs_differ(shards: Path):
    root = str(shards / "shards")
    images = ShardImages(root)
    continuing = ShardMultiCropDataset(images, IdTransform(), SEED, batch_size=4, rank=1, world_size=2)
    orders = []
    for epoch in range(3):
        continuing.set_epoch(epoch)
        orders.append([int(c[0][0]) for c, _, _ in continuing])
    resumed = ShardMultiCropDataset(ShardImages(root), IdTransform(), SEED, batch_size=4, rank=1, world_size=2)
    resumed.set_epoch(2)
    assert [int(c[0][0]) for c, _, _ in resumed] == orders[2]
    assert orders[0] != orders[1] != orders[2] and sorted(orders[0]) != sorted(orders[1])


def test_the_order_is_the_same_with_the_same_workers_and_loaders_see_it(shards: Path):
    first = _epoch(shards / "shards", epoch=3, world_size=2, workers=2)
    again = _epoch(shards / "shards", epoch=3, world_size=2, workers=2)
    assert [[i for i, _, _ in r] for r in first] == [[i for i, _, _ in r] for r in again]


def test_an_image_gets_the_same_crops_whichever_rank_or_worker_reads_it_and_as_from_the_folder(shards: Path):
    split = _epoch(shards / "shards", epoch=2, world_size=2, workers=2, transform=IdAndCrops())
    single = _epoch(shards / "shards", epoch=2, world_size=1, workers=0, transform=IdAndCrops())
    by_split = {image: crops for rank in split for image, _, crops in rank}
    by_single = {image: crops for image, _, crops in single[0]}
    assert set(by_split) == set(by_single) == set(range(48))
    folder = SeededMultiCropDataset(ImageFolderDataset(shards / "src"), IdAndCrops(), SEED)
    folder.set_epoch(2)
    for index in range(48):
        crops, _, _ = folder[index]
        image = int(crops[0][0])
        for a, b, c in zip(by_split[image], by_single[image], crops[1:], strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
            torch.testing.assert_close(a, c, rtol=0, atol=0)
    other_epoch = _epoch(shards / "shards", epoch=3, world_size=1, workers=0, transform=IdAndCrops())[0]
    assert not torch.equal(dict((i, c) for i, _, c in other_epoch)[5][0], by_single[5][0])


def test_mixing_keeps_every_sample_once_and_interleaves_runs():
    import random

    runs = [iter([(s * 100 + i, {}) for i in range(20)]) for s in range(6)]
    out = [i for i, _ in mixed(runs, random.Random(0), open_at_once=3, buffer_size=8)]
    assert sorted(out) == sorted(s * 100 + i for s in range(6) for i in range(20))
    assert len({i // 100 for i in out[:12]}) >= 3  # the first batch already mixes several shards


def _write_shard(path: Path, members: list[tuple[str, bytes]]) -> dict:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = path.read_bytes()
    return {"name": path.name, "count": len(members) // 2, "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


def test_a_corrupt_member_is_replaced_by_the_next_readable_image_and_counted(shards: Path, tmp_path: Path, caplog):
    src = sorted((shards / "src").rglob("*.png"))[:8]
    members = []
    for i, path in enumerate(src):
        members += [(f"{i:09d}.cls", b"0"), (f"{i:09d}.png", b"not a png" if i == 3 else path.read_bytes())]
    info = _write_shard(tmp_path / "shard-000000.tar", members)
    index = {"format": "webdataset", "version": 1, "classes": ["c0"], "total": 8, "skipped": 0, "shards": [info]}
    (tmp_path / "shards.json").write_text(json.dumps(index))
    dataset = ShardMultiCropDataset(ShardImages(str(tmp_path)), IdTransform(), SEED, batch_size=8)
    items = list(dataset)
    assert len(items) == 8 and sum(skipped for _, _, skipped in items) == 1
    assert "skipped sample 000000003" in caplog.text
    ids = Counter(int(crops[0][0]) for crops, _, _ in items)
    assert len(ids) == 7 and max(ids.values()) == 2  # one image stands in for the corrupt one


def test_a_shard_whose_sha256_differs_from_the_index_stops_with_its_name(shards: Path, tmp_path: Path):
    import shutil

    shutil.copytree(shards / "shards", tmp_path / "s")
    tar = tmp_path / "s" / "shard-000004.tar"
    data = bytearray(tar.read_bytes())
    data[-1] = 1  # in the end-of-archive padding: the tar still reads, the hash does not match
    tar.write_bytes(bytes(data))
    dataset = ShardMultiCropDataset(ShardImages(str(tmp_path / "s")), IdTransform(), SEED, batch_size=4)
    with pytest.raises(DataError, match=r"shard-000004\.tar .* does not match its index: sha256"):
        list(dataset)


def test_a_missing_or_resized_shard_is_found_when_the_shards_are_opened(shards: Path, tmp_path: Path):
    import shutil

    shutil.copytree(shards / "shards", tmp_path / "s")
    (tmp_path / "s" / "shard-000002.tar").unlink()
    with (tmp_path / "s" / "shard-000003.tar").open("ab") as f:
        f.write(b"\0" * 512)
    message = r"2 shard\(s\) .* shard-000002\.tar \(missing\), shard-000003\.tar \(20992 bytes, index says 20480"
    with pytest.raises(DataError, match=message):
        ShardImages(str(tmp_path / "s"))


def test_fewer_images_than_one_global_batch_is_a_clear_error(shards: Path):
    dataset = ShardMultiCropDataset(ShardImages(str(shards / "shards")), IdTransform(), SEED, batch_size=25,
                                    world_size=2)
    with pytest.raises(DataError, match="48 images, fewer than one global batch"):
        build_shard_loader(dataset)


def test_a_loader_over_one_rank_has_the_planned_length(shards: Path):
    dataset = ShardMultiCropDataset(ShardImages(str(shards / "shards")), IdTransform(), SEED, batch_size=5)
    assert len(build_shard_loader(dataset)) == 9 and len(list(DataLoader(dataset, batch_size=5))) == 9
