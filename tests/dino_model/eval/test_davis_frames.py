"""DAVIS frames are pre-processed bit for bit as the official reader does: OpenCV decode and uint8 resize.

The reference below is the official `read_frame` written out (cv2.imread, cv2.resize on uint8,
/ 255, BGR -> RGB, in-place normalisation), with the short side and multiple as parameters.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dino_model.errors import DataError
from dino_model.eval.davis.frames import DAVIS_MEAN, DAVIS_STD, frame_tensor, target_size
from dino_model.eval.davis.io import read_frame


def official_read_frame(path: Path, short: int = 480, multiple: int = 64) -> torch.Tensor:
    img = cv2.imread(str(path))
    ori_h, ori_w, _ = img.shape
    if ori_h > ori_w:
        tw = short
        th = int(((tw * ori_h) / ori_w // multiple) * multiple)
    else:
        th = short
        tw = int(((th * ori_w) / ori_h // multiple) * multiple)
    img = cv2.resize(img, (tw, th)).astype(np.float32) / 255.0
    img = torch.from_numpy(np.transpose(img[:, :, ::-1].copy(), (2, 0, 1))).float()
    for t, m, s in zip(img, DAVIS_MEAN, DAVIS_STD, strict=True):
        t.sub_(m)
        t.div_(s)
    return img


def ours(path: Path, short: int = 480, multiple: int = 64) -> torch.Tensor:
    rgb = read_frame(path)
    return frame_tensor(rgb, target_size(*rgb.shape[:2], short_side=short, multiple=multiple))[0]


def _image(path: Path, height: int, width: int) -> Path:
    rng = np.random.default_rng(height * 1000 + width)
    smooth = cv2.resize(rng.integers(0, 256, (6, 9, 3), dtype=np.uint8), (width, height))
    noise = rng.integers(-40, 41, (height, width, 3))
    Image.fromarray(np.clip(smooth.astype(int) + noise, 0, 255).astype(np.uint8)).save(path, quality=90)
    return path


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
@pytest.mark.parametrize(("hw", "short", "multiple"), [
    ((120, 213), 96, 8),     # landscape, downsized, long side floored
    ((150, 90), 64, 16),     # portrait
    ((70, 70), 96, 8),       # square: the height is the short side, as in the official reader
    ((50, 77), 100, 4),      # upsized
])
def test_generated_frames_equal_the_official_reader(tmp_path: Path, suffix: str, hw, short, multiple) -> None:
    path = _image(tmp_path / f"frame{suffix}", *hw)
    expected = official_read_frame(path, short, multiple)
    got = ours(path, short, multiple)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert torch.equal(got, expected)


def test_the_uint8_resize_is_what_differs_from_a_float_resize(tmp_path: Path) -> None:
    path = _image(tmp_path / "frame.png", 120, 213)
    rgb = read_frame(path)
    floated = F.interpolate(torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0, size=(96, 168),
                            mode="bilinear", align_corners=False, antialias=False)
    resized = torch.from_numpy(cv2.resize(rgb, (168, 96))).permute(2, 0, 1)[None].float() / 255.0
    gap = (floated - resized).abs().max().item()
    assert 0 < gap < 2 / 255  # rounding to uint8 and OpenCV's fixed-point weights: under 2 grey levels


def test_square_frames_take_the_landscape_rule() -> None:
    assert target_size(480, 480) == (480, 448)
    assert target_size(481, 480) == (448, 480)  # portrait: width fixed, height 481 floored to 448


def test_unreadable_frame_and_wrong_array_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "00000.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="00000.jpg"):
        read_frame(bad)
    with pytest.raises(DataError, match="uint8"):
        frame_tensor(np.zeros((4, 4, 3), dtype=np.float32), (4, 4))


@pytest.mark.shared_data
@pytest.mark.parametrize(("short", "multiple"), [(480, 64), (96, 8)])
def test_real_davis_frames_equal_the_official_reader(davis2016: Path, short: int, multiple: int) -> None:
    frames = sorted((davis2016 / "JPEGImages" / "480p").glob("*/00000.jpg"))[:2]
    assert frames, f"no frames under {davis2016}"
    for path in frames:
        assert torch.equal(ours(path, short, multiple), official_read_frame(path, short, multiple)), path
