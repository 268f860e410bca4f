"""data.extra_roots: image folders trained on beside data.root (the flywheel's captured images), counted by hand."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dino_model.config import load_config
from dino_model.data.datasets import ImageFolders
from dino_model.data.shards import pack_folder
from dino_model.data.sources import build_train_data, open_training_images
from dino_model.errors import DataError
from dino_model.logs import read_jsonl
from dino_model.train.loop import fit

from .shard_helpers import IdTransform, write_folder


def _write(path: Path, seed: int, size: int = 32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/: 6 images in 3 class folders; flat/: 2 images; captured/: 2 + 3 images under day folders, one
    unreadable file; shards/: train packed as tar shards."""
    base = tmp_path_factory.mktemp("extra")
    write_folder(base / "train", 6, size=32)
    for i in range(2):
        _write(base / "flat" / f"f{i}.png", i)
    for day, n in (("2024-05-01", 2), ("2024-05-02", 3)):
        for i in range(n):
            _write(base / "captured" / day / f"{i}.png", 10 + i)
    (base / "captured" / "2024-05-02" / "broken.png").write_bytes(b"not an image")
    pack_folder(base / "train", base / "shards", max_per_shard=3)
    return base


def test_without_extra_roots_the_root_alone_is_read(roots: Path):
    images = open_training_images(str(roots / "train"), [])
    assert not isinstance(images, ImageFolders) and len(images) == 6


def test_extra_roots_of_any_layout_add_their_images_after_the_root(roots: Path, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="dino_model.data.sources")
    images = open_training_images(str(roots / "train"), [str(roots / "flat"), str(roots / "captured")])
    assert (len(images), images.n_skipped) == (6 + 2 + 5, 1)
    assert [p.name for p in (s.path for s in images.samples[6:8])] == ["f0.png", "f1.png"]
    assert all("captured" in str(s.path) for s in images.samples[8:])
    image, _ = images[12]
    assert image.size == (32, 32)
    logged = [r.getMessage() for r in caplog.records]
    assert any(str(roots / "captured") in m and ": 5 (1 unreadable" in m for m in logged)


def test_the_loader_draws_from_every_root(roots: Path):
    common = dict(seed=0, batch_size=4, rank=0, world_size=1)
    images, dataset, loader, _ = build_train_data(str(roots / "train"), IdTransform(), **common,
                                                  extra_roots=[str(roots / "captured")])
    assert (len(images), len(dataset), len(loader)) == (11, 11, 2)


def test_a_missing_extra_folder_is_named(roots: Path):
    with pytest.raises(DataError, match="no-such-folder.*not a folder"):
        open_training_images(str(roots / "train"), [str(roots / "no-such-folder")])


def test_shards_do_not_combine_with_extra_roots(roots: Path):
    with pytest.raises(DataError, match="only combine with image folders.*shards"):
        build_train_data(str(roots / "shards"), IdTransform(), seed=0, batch_size=4, rank=0, world_size=1,
                         extra_roots=[str(roots / "captured")])


def test_fit_reads_the_root_and_the_extra_root_in_every_epoch(roots: Path, tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="dino_model.train.loop")
    extra = tmp_path / "more"
    for i in range(6):
        _write(extra / "day" / f"{i}.png", 100 + i)
    cfg = load_config("tiny", overrides=[
        f"data.root={roots / 'train'}", f"data.extra_roots=[{extra}]", f"train.output_dir={tmp_path / 'run'}",
        "model.out_dim=128", "train.batch_size=4", "train.epochs=1", "optim.freeze_last_layer_epochs=1"])
    fit(cfg)
    assert [r["steps"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [3]  # (6 + 6) / 4; alone: 1
    assert any("training 12 images" in r.getMessage() for r in caplog.records)
