"""Multi-crop augmentation: crop counts, sizes, normalisation, reproducibility per (seed, index)."""

import torch
from PIL import Image

from dino_model.config import CropConfig
from dino_model.data.transforms import MultiCropTransform, RandomSolarize


def _image():
    return Image.fromarray((torch.rand(40, 48, 3) * 255).byte().numpy())


def test_paper_defaults_give_two_224_and_eight_96_crops():
    crops = MultiCropTransform(CropConfig())(_image())
    assert [tuple(c.shape) for c in crops] == [(3, 224, 224)] * 2 + [(3, 96, 96)] * 8


def test_configurable_tiny_sizes():
    cfg = CropConfig(global_size=32, local_size=16, local_crops_number=6)
    crops = MultiCropTransform(cfg)(_image())
    assert len(crops) == 8 and crops[0].shape == (3, 32, 32) and crops[-1].shape == (3, 16, 16)
    assert crops[0].dtype == torch.float32 and crops[0].min() < 0  # normalised


def test_solarize_inverts_bright_pixels():
    img = Image.fromarray(torch.tensor([[[10, 200, 128]]], dtype=torch.uint8).numpy())
    out = RandomSolarize(1.0)(img)
    assert list(out.getpixel((0, 0))) == [10, 55, 127]


def test_augmentation_probabilities_switch_steps_off():
    """flip/jitter/solarise at p=0, blur radius 0, full-scale crops: every global view is the plain resized image."""
    ramp = torch.arange(32, dtype=torch.uint8).repeat(32, 1) * 8  # left-to-right ramp: a flip would change it
    img = Image.fromarray(ramp.numpy()).convert("RGB")  # grey, so random grayscale is the identity too
    off = CropConfig(global_size=32, local_size=16, local_crops_number=0, global_scale=[1.0, 1.0],
                     blur_radius=[0.0, 0.0], flip_p=0.0, color_jitter_p=0.0, solarize_p=0.0)
    on = CropConfig(**{**off.__dict__, "flip_p": 1.0})
    torch.manual_seed(0)
    plain = [MultiCropTransform(off)(img) for _ in range(5)]
    assert all(torch.equal(v, plain[0][0]) for views in plain for v in views)
    flipped = MultiCropTransform(on)(img)[0]
    assert torch.allclose(flipped, plain[0][0].flip(-1), atol=1e-6)
