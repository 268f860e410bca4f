"""Image folders: labelled and flat layouts; corrupt files skipped and counted, never a crash."""

import logging

import numpy as np
import pytest
from PIL import Image

from dino_model.data.datasets import ImageFolderDataset
from dino_model.errors import DataError


def _png(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)


def test_class_folders_give_sorted_labels(tmp_path):
    _png(tmp_path / "b" / "1.png")
    _png(tmp_path / "a" / "1.png")
    _png(tmp_path / "a" / "2.png")
    ds = ImageFolderDataset(tmp_path)
    assert ds.classes == ["a", "b"] and ds.labels == [0, 0, 1]
    image, label = ds[2]
    assert image.mode == "RGB" and label == 1


def test_flat_folder_is_unlabelled(tmp_path):
    _png(tmp_path / "x.png")
    assert ImageFolderDataset(tmp_path).labels == [-1]


def test_corrupt_and_truncated_images_are_skipped_with_a_count(tmp_path, caplog):
    _png(tmp_path / "c" / "good.png")
    (tmp_path / "c" / "garbage.jpg").write_bytes(b"not an image at all")
    _png(tmp_path / "c" / "truncated.png", 7)
    data = (tmp_path / "c" / "truncated.png").read_bytes()
    (tmp_path / "c" / "truncated.png").write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING):
        ds = ImageFolderDataset(tmp_path)
    assert len(ds) == 1 and ds.n_skipped == 2
    assert "skipped 2 unreadable image(s)" in caplog.text


def test_no_readable_image_is_a_clear_error(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match="no readable image.*1 file"):
        ImageFolderDataset(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        ImageFolderDataset(tmp_path / "missing")
