"""data.root picks the source: training runs on tar shards as on the folder they were packed from."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dino_model.config import load_config
from dino_model.data.datasets import ImageFolderDataset
from dino_model.data.shard_stream import ShardImages, ShardMultiCropDataset
from dino_model.data.shards import pack_folder
from dino_model.data.sources import build_train_data
from dino_model.logs import read_jsonl
from dino_model.runtime.checkpoint import load_checkpoint
from dino_model.train.loop import fit

from .shard_helpers import IdTransform, write_folder


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sources")
    write_folder(root / "src", 16, size=32)
    pack_folder(root / "src", root / "shards", max_per_shard=3)
    return root


def _cfg(root: Path, out: Path, *overrides: str):
    return load_config("tiny", overrides=[
        f"data.root={root}", f"train.output_dir={out}", "model.out_dim=128", "train.batch_size=8",
        "optim.freeze_last_layer_epochs=1", *overrides])


def test_a_folder_of_shards_gets_the_stream_and_an_image_folder_the_sampler(packed: Path):
    common = dict(seed=0, batch_size=8, rank=0, world_size=1)
    images, dataset, loader, sampler = build_train_data(str(packed / "shards"), IdTransform(), **common)
    assert isinstance(images, ShardImages) and isinstance(dataset, ShardMultiCropDataset) and sampler is dataset
    assert (len(images), images.n_skipped, len(loader)) == (16, 0, 2)
    images, *_ = build_train_data(str(packed / "src"), IdTransform(), **common)
    assert isinstance(images, ImageFolderDataset)


def test_fit_trains_from_shards_and_a_resumed_run_ends_where_an_uninterrupted_one_does(packed: Path, tmp_path: Path):
    shards = packed / "shards"
    result = fit(_cfg(shards, tmp_path / "full", "train.epochs=2"))
    assert [r["steps"] for r in read_jsonl(tmp_path / "full" / "metrics.jsonl")] == [2, 2]
    assert result.final_metrics["skipped_at_scan"] == 0
    fit(_cfg(shards, tmp_path / "split", "train.epochs=2", "train.stop_after_epochs=1"))
    fit(_cfg(shards, tmp_path / "split", "train.epochs=2"), resume=True)
    full = load_checkpoint(tmp_path / "full" / "checkpoint.pth")
    split = load_checkpoint(tmp_path / "split" / "checkpoint.pth")
    assert full["epoch"] == split["epoch"] == 2
    for key, ref in full["student"].items():
        torch.testing.assert_close(split["student"][key], ref, atol=1e-6, rtol=0)
