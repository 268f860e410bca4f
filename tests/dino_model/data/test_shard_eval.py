"""Evaluating on shards reads every labelled image once and scores what the folder scores."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from dino_model.config import EvalConfig
from dino_model.data.shards import pack_folder
from dino_model.data.sources import labelled_images
from dino_model.errors import DataError
from dino_model.eval.features import extract_features
from dino_model.eval.knn_run import run_knn_eval

from .shard_helpers import write_folder


def _rows(features: torch.Tensor, labels: torch.Tensor) -> list[tuple]:
    return sorted(zip(map(tuple, features.tolist()), labels.tolist(), strict=True))


@pytest.mark.parametrize("workers", [0, 2])
def test_features_from_shards_are_the_folders_rows(tmp_path: Path, workers: int) -> None:
    write_folder(tmp_path / "src", 21, classes=3, size=8)
    index = pack_folder(tmp_path / "src", tmp_path / "shards", max_per_shard=4)
    assert len(index.shards) == 6
    (tmp_path / "src" / "c0" / "zz-broken.png").write_bytes(b"\x89PNG truncated")  # skipped in the folder too
    cfg = EvalConfig(image_size=8, resize_size=8, batch_size=5)
    folder = extract_features(nn.Flatten(), tmp_path / "src", cfg, num_workers=workers)
    shards = extract_features(nn.Flatten(), tmp_path / "shards", cfg, num_workers=workers)
    assert len(shards[1]) == 21 and _rows(*shards) == _rows(*folder)
    assert labelled_images(str(tmp_path / "shards"), lambda x: x).classes == ["c0", "c1", "c2"]


def test_a_shard_changed_after_packing_stops_the_evaluation_naming_it(tmp_path: Path) -> None:
    write_folder(tmp_path / "src", 6, classes=2, size=8)
    index = pack_folder(tmp_path / "src", tmp_path / "shards")
    shard = tmp_path / "shards" / index.shards[0].name
    data = bytearray(shard.read_bytes())
    data[-1100] ^= 0xFF  # inside the last member's data: the tar still parses, the hash does not match
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"shard {index.shards[0].name} .* does not match its index"):
        extract_features(nn.Flatten(), tmp_path / "shards", EvalConfig(image_size=8, resize_size=8))


def test_knn_on_shards_scores_what_it_scores_on_folders(tmp_path: Path, tiny_checkpoint: Path,
                                                        digits_root: Path) -> None:
    train, val = digits_root / "train", digits_root / "val"
    for name, folder in (("train", train), ("val", val)):
        pack_folder(folder, tmp_path / name, max_per_shard=97)
    cfg = EvalConfig(image_size=32, resize_size=32, knn_k=[5, 10])
    on_folders = run_knn_eval(tiny_checkpoint, cfg, train_dir=train, val_dir=val, output=tmp_path / "a.json")
    on_shards = run_knn_eval(tiny_checkpoint, cfg, train_dir=tmp_path / "train", val_dir=tmp_path / "val",
                             output=tmp_path / "b.json")
    assert on_shards["metrics"] == pytest.approx(on_folders["metrics"], abs=1e-9)
    assert on_shards["details"]["n_val"] == on_folders["details"]["n_val"] > 0
