"""Training survives bad files: a decompression bomb in the folder, images deleted while the job runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from torch.utils.data import DistributedSampler

from dino_model.data.datasets import ImageFolderDataset
from dino_model.logs import read_jsonl
from dino_model.train import loop

SMALL = ["model.out_dim=128", "train.batch_size=8", "train.saveckp_freq=0"]


@pytest.fixture
def digits_copy(small_digits: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(small_digits, tmp_path / "data"))


def _pretrain(data: Path, out: Path, *overrides: str) -> list[str]:
    return ["pretrain", "--config", "tiny", f"data.root={data}", f"train.output_dir={out}", *SMALL, *overrides]


def test_a_decompression_bomb_in_the_training_folder_is_skipped_and_reported(run_cli, digits_copy: Path,
                                                                             tmp_path: Path, capsys):
    bomb = digits_copy / "3" / "huge.png"
    Image.new("L", (20000, 20000), 0).save(bomb, optimize=True)
    assert bomb.stat().st_size < 500_000
    assert run_cli(_pretrain(digits_copy, tmp_path / "run", "train.epochs=1")) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert result["final_metrics"]["skipped_at_scan"] == 1 and result["final_metrics"]["steps"] == 76 // 8
    assert "skipped 1 unreadable image(s)" in err and "huge.png (image too large to decode safely" in err
    (record,) = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert record["skipped_at_scan"] == 1 and record["skipped_in_epoch"] == 0


def test_images_deleted_after_the_folder_was_listed_are_skipped_and_counted(run_cli, digits_copy: Path,
                                                                            tmp_path: Path, monkeypatch, capsys):
    """Data pulled from under a running job: every read of a vanished file is skipped, counted, logged."""
    deleted_indices = [5, 20, 41, 60]

    class DataPulledAfterListing(ImageFolderDataset):
        def __init__(self, root, transform=None):
            super().__init__(root, transform)
            for i in deleted_indices:
                self.samples[i].path.unlink()

    monkeypatch.setattr(loop, "ImageFolderDataset", DataPulledAfterListing)
    assert run_cli(_pretrain(digits_copy, tmp_path / "run", "train.epochs=2")) == 0
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    expected = []
    for epoch in (0, 1):
        sampler = DistributedSampler(range(76), num_replicas=1, rank=0, shuffle=True, seed=0)
        sampler.set_epoch(epoch)
        used = list(sampler)[: 76 // 8 * 8]  # drop_last
        expected.append(sum(i in used for i in deleted_indices))
    assert [r["skipped_in_epoch"] for r in records] == expected and all(expected)
    assert [r["steps"] for r in records] == [9, 9]
    err = capsys.readouterr().err
    assert f"epoch 0: {expected[0]} image file(s) could not be read and were skipped" in err
    assert "file no longer exists" in err
