"""The DAVIS layout: palette PNGs, DAVIS 2016 grayscale masks, void, sequence lists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dino_model.errors import DataError
from dino_model.eval.davis.io import davis_palette, list_sequences, read_mask, write_indexed_png


def test_palette_is_the_pascal_davis_colour_map() -> None:
    palette = davis_palette()
    assert len(palette) == 768
    assert palette[0:3] == [0, 0, 0]
    assert palette[3:6] == [128, 0, 0]  # object 1
    assert palette[6:9] == [0, 128, 0]
    assert palette[9:12] == [128, 128, 0]
    assert palette[12:15] == [0, 0, 128]
    assert palette[765:768] == [224, 224, 192]  # 255, the void colour


def test_indexed_png_round_trip(tmp_path: Path) -> None:
    labels = np.array([[0, 1, 2], [3, 1, 0]], dtype=np.uint8)
    path = write_indexed_png(tmp_path / "a" / "00000.png", labels)
    with Image.open(path) as img:
        assert img.mode == "P"
        assert img.getpalette()[3:6] == [128, 0, 0]
    np.testing.assert_array_equal(read_mask(path), labels)


def test_palette_void_becomes_background(tmp_path: Path) -> None:
    path = write_indexed_png(tmp_path / "m.png", np.array([[0, 255], [2, 1]], dtype=np.uint8))
    np.testing.assert_array_equal(read_mask(path), [[0, 0], [2, 1]])


def test_davis2016_grayscale_masks_read_as_object_one(tmp_path: Path) -> None:
    raw = np.array([[0, 255, 255], [0, 0, 255]], dtype=np.uint8)
    path = tmp_path / "00000.png"
    Image.fromarray(raw, mode="L").save(path)
    expected = (raw == 255).astype(np.uint8)
    np.testing.assert_array_equal(read_mask(path), expected)
    np.testing.assert_array_equal(read_mask(path, mask_format="2016"), expected)
    # Read as 2017 ids, 255 is void: the object disappears, as with the official 2017 tools.
    assert read_mask(path, mask_format="2017").max() == 0


def test_grayscale_ids_other_than_0_255_stay_ids(tmp_path: Path) -> None:
    path = tmp_path / "ids.png"
    Image.fromarray(np.array([[0, 1], [2, 3]], dtype=np.uint8), mode="L").save(path)
    np.testing.assert_array_equal(read_mask(path), [[0, 1], [2, 3]])


def test_rgb_masks_and_unknown_formats_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "rgb.png"
    Image.new("RGB", (4, 4)).save(path)
    with pytest.raises(DataError, match="mode 'RGB'"):
        read_mask(path)
    with pytest.raises(DataError, match="mask_format"):
        read_mask(path, mask_format="2019")


def test_sequence_list(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="ImageSets/2017/val.txt"):
        list_sequences(tmp_path)
    sets = tmp_path / "ImageSets" / "2017"
    sets.mkdir(parents=True)
    (sets / "val.txt").write_text("bear\n\nblackswan\n")
    assert list_sequences(tmp_path) == ["bear", "blackswan"]
