"""k-NN end to end: validation labels follow the train folder's classes by name, not by folder position."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dino_model.config import EvalConfig
from dino_model.errors import DataError
from dino_model.eval.knn_run import run_knn_eval

CFG = EvalConfig(image_size=32, resize_size=32, knn_k=[10])


def test_a_val_folder_with_fewer_classes_is_scored_against_the_right_ones(tmp_path: Path, tiny_checkpoint: Path,
                                                                         digits_root: Path) -> None:
    train, val = digits_root / "train", digits_root / "val"
    full = run_knn_eval(tiny_checkpoint, CFG, train_dir=train, val_dir=val, output=tmp_path / "full.json")
    classes = full["details"]["classes"]
    last = classes[-1]  # alone in its folder it is class 0 of the val folder, class 9 of the train folder
    shutil.copytree(val / last, tmp_path / "val" / last)
    alone = run_knn_eval(tiny_checkpoint, CFG, train_dir=train, val_dir=tmp_path / "val", output=tmp_path / "a.json")
    row = full["details"]["confusion_matrix"][len(classes) - 1]
    assert alone["metrics"]["knn_top1"] == pytest.approx(100.0 * row[-1] / sum(row))
    assert alone["details"]["n_val"] == sum(row)


def test_a_val_class_the_memory_bank_lacks_is_refused(tmp_path: Path, tiny_checkpoint: Path,
                                                      digits_root: Path) -> None:
    shutil.copytree(digits_root / "val" / "3", tmp_path / "val" / "3")
    shutil.copytree(digits_root / "val" / "3", tmp_path / "val" / "unicorns")
    with pytest.raises(DataError, match="class folders the k-NN memory bank lacks: unicorns"):
        run_knn_eval(tiny_checkpoint, CFG, train_dir=digits_root / "train", val_dir=tmp_path / "val",
                     output=tmp_path / "r.json")
