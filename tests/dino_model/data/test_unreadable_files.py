"""Files a long job must survive: decompression bombs and images deleted after the folder was listed."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dino_model.config import CropConfig, EvalConfig
from dino_model.data.datasets import ImageFolderDataset
from dino_model.data.loaders import SeededMultiCropDataset
from dino_model.data.transforms import MultiCropTransform, eval_transform
from dino_model.errors import DataError
from dino_model.serving.images import collect_images, load_batch


def write_bomb(path: Path) -> Path:
    """A PNG of a few dozen KB declaring 20000 x 20000 pixels: PIL refuses it as a decompression bomb."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("1", (20000, 20000), 0).save(path, optimize=True)
    assert path.stat().st_size < 64_000
    return path


def _png(path: Path, value: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((12, 12, 3), value, dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bomb(tmp_path_factory.mktemp("bomb") / "huge.png")


def test_a_decompression_bomb_is_skipped_and_counted_by_the_scan(tmp_path: Path, bomb: Path, caplog):
    _png(tmp_path / "a" / "1.png", 10)
    _png(tmp_path / "a" / "2.png", 20)
    shutil.copy(bomb, tmp_path / "a" / "huge.png")
    with caplog.at_level(logging.WARNING):
        ds = ImageFolderDataset(tmp_path)
    assert len(ds) == 2 and ds.n_skipped == 1
    (path, reason), = ds.skipped
    assert path == tmp_path / "a" / "huge.png" and "too large to decode safely" in reason
    assert "skipped 1 unreadable image(s)" in caplog.text and "huge.png" in caplog.text


def test_infer_reading_names_each_bad_file_and_keeps_the_rest(tmp_path: Path, bomb: Path):
    folder = tmp_path / "folder"
    _png(folder / "cats" / "ok.png", 30)
    shutil.copy(bomb, folder / "cats" / "huge.png")
    (folder / "cats" / "garbage.png").write_bytes(b"\x89PNG not really")
    single_good = _png(tmp_path / "single.png", 40)
    items, skipped = collect_images([folder, bomb, single_good])
    assert [i.path for i in items] == [folder / "cats" / "ok.png", bomb, single_good]
    assert {s["path"] for s in skipped} == {str(folder / "cats" / "huge.png"), str(folder / "cats" / "garbage.png")}
    assert "too large to decode safely" in next(s["reason"] for s in skipped if s["path"].endswith("huge.png"))

    images, kept, bad = load_batch(items, eval_transform(EvalConfig(image_size=8, resize_size=8)))
    assert images.shape == (2, 3, 8, 8) and [i.path for i in kept] == [folder / "cats" / "ok.png", single_good]
    assert bad == [{"path": str(bomb), "reason": bad[0]["reason"]}]
    assert "too large to decode safely" in bad[0]["reason"]


def _multicrop(root: Path) -> SeededMultiCropDataset:
    crops = CropConfig(global_size=8, local_size=4, local_crops_number=1)
    return SeededMultiCropDataset(ImageFolderDataset(root), MultiCropTransform(crops), seed=0)


def test_an_image_deleted_after_listing_is_replaced_by_the_next_and_counted(tmp_path: Path, caplog):
    paths = [_png(tmp_path / name / "x.png", 40 * i) for i, name in enumerate("abcd")]
    dataset = _multicrop(tmp_path)
    paths[1].unlink()
    with caplog.at_level(logging.WARNING):
        crops, label, skipped = dataset[1]
    assert (skipped, label) == (1, 2) and [c.shape for c in crops] == [(3, 8, 8), (3, 8, 8), (3, 4, 4)]
    assert f"skipped {paths[1]}: file no longer exists" in caplog.text
    assert [dataset[i][1:] for i in (0, 2, 3)] == [(0, 0), (2, 0), (3, 0)]
    paths[3].unlink()
    assert dataset[3][1:] == (0, 1)  # wraps round to the first image


def test_a_data_set_deleted_under_a_running_job_is_one_clear_error(tmp_path: Path):
    from dino_model.data.loaders import batches, build_train_loader

    for i in range(3):
        _png(tmp_path / f"{i}.png", i)
    dataset = _multicrop(tmp_path)
    for png in tmp_path.glob("*.png"):
        png.unlink()
    with pytest.raises(DataError, match=r"3 images in a row under .* cannot be read any more"):
        dataset[0]
    loader, _ = build_train_loader(dataset, batch_size=2, rank=0, world_size=1, seed=0, num_workers=1)
    with pytest.raises(DataError) as info:
        next(iter(batches(loader)))  # raised in a worker process, reported as one line
    assert str(info.value).startswith("3 images in a row") and "\n" not in str(info.value)
