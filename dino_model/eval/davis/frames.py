"""Frame and first-mask pre-processing for label propagation, as DINO's DAVIS script does it.

`eval_video_segmentation.py` (Caron et al., ICCV 2021, Sec. 4.2.2; protocol of Jabri et al. 2020)
resizes every frame so that its short side is 480 px and its long side is floored to a multiple
of 64. It resizes the decoded uint8 image with OpenCV's bilinear `cv2.resize` (fixed-point
weights, results rounded back to uint8) and only then divides by 255, so the same call is used
here: a float resize differs by up to 0.009 after normalisation on DAVIS frames. It normalises
with the ImageNet mean and the std (0.228, 0.224, 0.225), whose 0.228 is a typo inherited from
the UVC code and kept here because the published numbers were produced with it. The first
annotation is resized with nearest neighbour straight to the patch grid and one-hot encoded. The
short side and the multiple are parameters, so that tests with a 32-px, patch-4 model can use
small frames. Square frames take the landscape rule, as in the official frame reader.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from dino_model.errors import ConfigError, DataError

DAVIS_MEAN = (0.485, 0.456, 0.406)
DAVIS_STD = (0.228, 0.224, 0.225)  # sic: the official script's value (0.229 elsewhere)


def target_size(height: int, width: int, *, short_side: int | None = 480, multiple: int = 64) -> tuple[int, int]:
    """(height, width) a frame is resized to: short side fixed, long side floored to `multiple`.

    A portrait frame (height > width) gets width = short_side; any other, square frames included,
    gets height = short_side (the official frame reader's rule). short_side=None keeps the frame's
    own short side. 854 x 480 -> (480, 832) with the defaults; 480 x 480 -> (480, 448).
    """
    if short_side is None:
        short_side = min(height, width)
    if short_side <= 0 or multiple <= 0:
        raise ConfigError(f"frame short side {short_side} and size multiple {multiple} must be positive")
    if height > width:
        long_side = int((short_side * height / width) // multiple * multiple)
        size = (long_side, short_side)
    else:
        long_side = int((short_side * width / height) // multiple * multiple)
        size = (short_side, long_side)
    if min(size) <= 0:
        raise ConfigError(
            f"a {height}x{width} frame with short side {short_side} floors to {size}; "
            f"use a size multiple below {max(size[0], size[1], multiple)} or a larger short side"
        )
    return size


def frame_tensor(rgb: np.ndarray, size: tuple[int, int]) -> Tensor:
    """(H, W, 3) uint8 -> (1, 3, h, w) float32: OpenCV bilinear resize on uint8, / 255, normalised."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise DataError(f"a DAVIS frame must be an (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
    height, width = size
    if rgb.shape[:2] != (height, width):
        rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_LINEAR)  # per channel: RGB = BGR order
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255.0
    mean = torch.tensor(DAVIS_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(DAVIS_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def first_labels(mask: np.ndarray, grid: tuple[int, int], *, n_channels: int | None = None) -> Tensor:
    """One-hot (C, h, w) labels of an (H, W) id mask, nearest-resized straight to the patch grid.

    C is the largest id + 1 unless given, so object k is channel k and background channel 0.
    """
    h, w = grid
    small = np.array(Image.fromarray(mask.astype(np.uint8)).resize((w, h), Image.NEAREST))
    ids = torch.from_numpy(small).long()
    channels = n_channels if n_channels is not None else int(mask.max()) + 1
    return F.one_hot(ids, num_classes=channels).permute(2, 0, 1).float()


def labels_to_mask(soft: Tensor, *, patch_size: int, out_size: tuple[int, int]) -> np.ndarray:
    """Soft (C, h, w) labels -> (H, W) uint8 ids at the original frame size.

    Bilinear upsampling by the patch size, each channel min-max rescaled to [0, 1] when its max
    is positive (DINO's `norm_mask`, which changes the argmax), argmax, then nearest resize.
    """
    up = F.interpolate(soft[None], scale_factor=patch_size, mode="bilinear", align_corners=False,
                       recompute_scale_factor=False)[0]
    up = normalise_channels(up)
    ids = up.argmax(dim=0).to(torch.uint8).numpy()
    height, width = out_size
    if ids.shape != (height, width):
        ids = np.array(Image.fromarray(ids).resize((width, height), Image.NEAREST))
    return ids


def normalise_channels(x: Tensor) -> Tensor:
    """Per channel: (x - min) / (max - min) where max > 0, else unchanged (DINO's `norm_mask`)."""
    flat = x.flatten(1)
    lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
    scaled = (x - lo[:, None, None]) / (hi - lo).clamp_min(torch.finfo(x.dtype).tiny)[:, None, None]
    return torch.where((hi > 0)[:, None, None], scaled, x)
