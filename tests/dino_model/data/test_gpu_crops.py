"""The device-side multi-crop: official parameter distributions, per-operation parity with the PIL and
torchvision path, reproducibility per image, unreadable data, and a training epoch with crops.backend=gpu."""

import importlib.util
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageFilter
from scipy import stats
from torchvision.transforms import InterpolationMode, RandomResizedCrop

from dino_model.config import CropConfig, load_config
from dino_model.data.crop_params import crop_boxes, crop_params, draw_uniforms, view_specs
from dino_model.data.datasets import ImageFolderDataset
from dino_model.data.encoded import SeededEncodedDataset
from dino_model.data.loaders import SeededMultiCropDataset
from dino_model.errors import ConfigError, DataError

needs_kornia = pytest.mark.skipif(importlib.util.find_spec("kornia") is None,
                                  reason="kornia (the gpu-aug extra) is not installed")
OFFICIAL = CropConfig(local_crops_number=10)  # 2 x 224 + 10 x 96, the official probabilities and ranges
N_IMAGES = 3000
SEEDS = list(range(N_IMAGES))


def _params(height: int = 375, width: int = 500, cfg: CropConfig = OFFICIAL):
    specs = view_specs(cfg)
    sizes = torch.tensor([[height, width]] * N_IMAGES)
    return crop_params(draw_uniforms(SEEDS, len(specs)), sizes, specs, cfg)


def _within_binomial(flags: torch.Tensor, p: float) -> None:
    n, observed = flags.numel(), flags.float().mean().item()
    bound = 4.5 * math.sqrt(p * (1 - p) / n) + 1e-12  # a 4.5 sigma band: a false alarm about 1 in 150,000
    assert abs(observed - p) <= bound, f"rate {observed:.4f} vs {p} (n {n}, bound {bound:.4f})"


def _torchvision_boxes(height: int, width: int, scale, n: int) -> torch.Tensor:
    torch.manual_seed(0)
    image = torch.empty(1, height, width)
    return torch.tensor([RandomResizedCrop.get_params(image, list(scale), [3 / 4, 4 / 3]) for _ in range(n)])


# ---- parameter distributions --------------------------------------------------------------------------------


@pytest.mark.parametrize(("height", "width", "scale"), [(375, 500, (0.4, 1.0)), (375, 500, (0.05, 0.4)),
                                                         (40, 400, (0.4, 1.0))])
def test_crop_boxes_follow_torchvision_random_resized_crop(height, width, scale):
    """Same distribution as torchvision's get_params (the official crop), including its centre fallback."""
    spec_cfg = CropConfig(local_crops_number=0, global_scale=list(scale))
    specs = view_specs(spec_cfg)[:1]
    ours = crop_boxes(draw_uniforms(SEEDS, 1), torch.tensor([[height, width]] * N_IMAGES), specs)[:, 0]
    ref = _torchvision_boxes(height, width, scale, N_IMAGES)
    top, left, h, w = ours.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()
    for name, column in (("area", lambda b: b[:, 2] * b[:, 3]), ("log ratio", lambda b: (b[:, 3] / b[:, 2]).log()),
                         ("top", lambda b: b[:, 0]), ("left", lambda b: b[:, 1])):
        p_value = stats.ks_2samp(column(ours).double().numpy(), column(ref).double().numpy()).pvalue
        assert p_value > 1e-4, f"{name}: two-sample KS p={p_value:.2e}"


def test_crop_area_is_uniform_in_scale_and_ratio_log_uniform_where_every_attempt_fits():
    """On a large image no local attempt is rejected, so area ~ U(scale) and log(w/h) ~ U(log 3/4, log 4/3) exactly."""
    params = _params(2000, 2000)
    boxes = params.boxes[:, 2:].reshape(-1, 4)  # local crops: scale (0.05, 0.4)
    h, w = boxes[:, 2].double(), boxes[:, 3].double()
    area = h * w / 2000**2
    slack = 1 / h.min() + 1 / w.min()  # rounding w and h to whole pixels moves the area by at most this fraction
    assert area.min() >= 0.05 * (1 - slack) and area.max() <= 0.4 * (1 + slack)
    assert stats.kstest(area.numpy(), stats.uniform(0.05, 0.35).cdf).pvalue > 1e-4
    log_ratio = (w / h).log()
    lo, hi = math.log(3 / 4), math.log(4 / 3)
    assert log_ratio.min() >= lo - slack and log_ratio.max() <= hi + slack
    assert stats.kstest(log_ratio.numpy(), stats.uniform(lo, hi - lo).cdf).pvalue > 1e-4
    big = params.boxes[:, :2].reshape(-1, 4)  # global crops: attempts beyond the image are redrawn (torchvision test)
    big_area = (big[:, 2] * big[:, 3]).double() / 2000**2
    assert big_area.min() >= 0.4 * (1 - slack) and big_area.max() <= 1


def test_jitter_factors_span_the_official_ranges_uniformly_in_a_uniform_random_order():
    params = _params()
    factors = params.factors.reshape(-1, 4).double()
    for k, (lo, hi) in enumerate([(0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1)]):
        column = factors[:, k].numpy()
        assert lo <= column.min() and column.max() <= hi
        assert column.min() < lo + 0.01 and column.max() > hi - 0.01
        assert stats.kstest(column, stats.uniform(lo, hi - lo).cdf).pvalue > 1e-4
    orders = params.order.reshape(-1, 4)
    assert (orders.sort(-1).values == torch.arange(4)).all()  # each row a permutation
    codes = (orders * torch.tensor([64, 16, 4, 1])).sum(-1)
    counts = torch.bincount(codes, minlength=256)[torch.unique(codes)]
    assert len(counts) == 24
    assert stats.chisquare(counts.numpy()).pvalue > 1e-4


def test_probabilities_are_the_official_ones_per_crop_kind():
    params = _params()
    for flags, p in ((params.flip, 0.5), (params.jitter, 0.8), (params.gray, 0.2)):
        _within_binomial(flags, p)
    assert params.blur[:, 0].all()  # global 1: p 1.0
    _within_binomial(params.blur[:, 1], 0.1)
    _within_binomial(params.blur[:, 2:], 0.5)
    _within_binomial(params.solarize[:, 1], 0.2)
    assert not params.solarize[:, [0, *range(2, 12)]].any()  # only the second global crop
    radius = params.sigma.reshape(-1).double()
    assert stats.kstest(radius.numpy(), stats.uniform(0.1, 1.9).cdf).pvalue > 1e-4


def test_flip_and_jitter_probabilities_follow_the_config():
    params = _params(cfg=CropConfig(local_crops_number=2, flip_p=0.0, color_jitter_p=0.3))
    assert not params.flip.any()
    _within_binomial(params.jitter, 0.3)


# ---- per-operation parity -----------------------------------------------------------------------------------


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 RGB with flat regions, edges and noise, so that resampling and blur have something to act on."""
    rng = np.random.default_rng(seed)
    blocks = np.kron(rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3)), np.ones((8, 8, 1)))
    noisy = blocks[:height, :width] + rng.integers(-20, 21, (height, width, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255


@needs_kornia
def test_resized_crops_equal_torchvision_resized_crop_and_pil_within_rounding():
    from dino_model.data.gpu_crops import resized_crops

    array = _image(60, 80)
    image = torch.from_numpy(array.copy()).permute(2, 0, 1)
    boxes = [[0, 0, 60, 80], [5, 7, 30, 41], [50, 70, 10, 10], [1, 2, 3, 4]]  # down- and upsampling, odd shapes
    ours = resized_crops([image], [boxes], 24)[:, 0]
    for crop, (top, left, h, w) in zip(ours, boxes, strict=True):
        pil = Image.fromarray(array).crop((left, top, left + w, top + h)).resize((24, 24), Image.BICUBIC)
        # PIL rounds each of its two passes to uint8: at most one grey level apart (measured: 1.07 at most).
        # torchvision's tensor path does not clip between passes and is up to ~10 grey levels off at sharp edges.
        assert (crop - _tensor(np.asarray(pil))).abs().max() <= 1.5 / 255
    smooth = (0.3 + 0.4 * torch.rand(1, 3, 6, 8)).repeat_interleave(10, -1).repeat_interleave(10, -2)
    smooth = TF.gaussian_blur(smooth, [9, 9], [3.0, 3.0])  # no overshoot outside [0, 1]: nothing to clip
    ours = resized_crops([smooth[0]], [boxes], 24)[:, 0]  # float input, as a decoded image converted
    for crop, (top, left, h, w) in zip(ours, boxes, strict=True):
        ref = TF.resized_crop(smooth[0], top, left, h, w, [24, 24], InterpolationMode.BICUBIC, antialias=True)
        torch.testing.assert_close(crop, ref, atol=1e-5, rtol=0)


@needs_kornia
@pytest.mark.parametrize("limit", [None, 1])  # the default chunking, and one image per chunk
def test_resized_crops_of_a_batch_of_differently_sized_images_equal_each_crop_resized_alone(monkeypatch, limit):
    import dino_model.data.gpu_crops as gpu_crops

    if limit:
        monkeypatch.setattr(gpu_crops, "RESAMPLE_ELEMENTS", limit)
    shapes = [(60, 80), (33, 47), (80, 20)]
    images = [TF.gaussian_blur(0.2 + 0.6 * torch.rand(3, h, w), [5, 5], [2.0, 2.0]) for h, w in shapes]
    boxes = [[[0, 0, 60, 80], [5, 7, 30, 41]], [[2, 3, 30, 40], [1, 2, 3, 4]], [[10, 0, 70, 20], [79, 19, 1, 1]]]
    ours = gpu_crops.resized_crops(images, boxes, 16)
    assert ours.shape == (2, 3, 3, 16, 16)
    for b, (image, image_boxes) in enumerate(zip(images, boxes, strict=True)):
        for c, (top, left, h, w) in enumerate(image_boxes):
            ref = TF.resized_crop(image, top, left, h, w, [16, 16], InterpolationMode.BICUBIC, antialias=True)
            torch.testing.assert_close(ours[c, b], ref.clamp(0, 1), atol=1e-5, rtol=0)


@needs_kornia
def test_resampling_weights_are_normalised_and_stay_inside_each_crop():
    from dino_model.data.gpu_crops import pil_resample_weights, resized_crops, tap_count

    start, length = torch.tensor([[0.0, 10.0, 37.0]]), torch.tensor([[50.0, 7.0, 13.0]])
    weights = pil_resample_weights(start, length, 50, 9, tap_count(length, 9))[0]  # (extent, crops, size)
    torch.testing.assert_close(weights.sum(0), torch.ones(3, 9))
    x = torch.arange(50)[:, None]
    inside = (x >= start[0]) & (x < start[0] + length[0])
    assert (weights[~inside[:, :, None].expand_as(weights)] == 0).all()
    with pytest.raises(ValueError, match="share a dtype"):
        resized_crops([torch.zeros(3, 4, 4, dtype=torch.uint8), torch.zeros(3, 4, 4)], [[[0, 0, 4, 4]]] * 2, 2)


@needs_kornia
def test_color_jitter_equals_torchvision_ops_applied_in_each_samples_order():
    import kornia

    from dino_model.data.gpu_crops import color_jitter

    x = torch.stack([_tensor(_image(16, 16, seed)) for seed in range(8)])
    generator = torch.Generator().manual_seed(0)
    order = torch.stack([torch.randperm(4, generator=generator) for _ in range(8)])
    factors = torch.stack([torch.empty(8).uniform_(0.6, 1.4, generator=generator),
                           torch.empty(8).uniform_(0.6, 1.4, generator=generator),
                           torch.empty(8).uniform_(0.8, 1.2, generator=generator),
                           torch.empty(8).uniform_(-0.1, 0.1, generator=generator)], dim=1)
    apply = torch.tensor([True] * 7 + [False])
    ours = color_jitter(x, apply, order, factors, kornia)
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for n in range(8):
        ref = x[n]
        for op in order[n].tolist() if apply[n] else []:
            ref = ops[op](ref, factors[n, op].item())
        # contrast and saturation use PIL's grey weights (0.299 vs torchvision's 0.2989): at most 1e-4 per pixel
        torch.testing.assert_close(ours[n], ref, atol=2e-4, rtol=0)
    assert (ours[:7] - x[:7]).abs().amax(dim=(1, 2, 3)).min() > 0.02  # the jitter did change each image


@needs_kornia
def test_grayscale_flip_solarise_and_normalise_equal_torchvision():
    from dino_model.data.crop_params import CropParams
    from dino_model.data.gpu_crops import GpuMultiCrop

    x = torch.stack([_tensor(_image(16, 16, seed)) for seed in range(4)])
    n = len(x)
    no = torch.zeros(n, dtype=torch.bool)
    params = CropParams(boxes=torch.zeros(n, 4, dtype=torch.long), flip=torch.tensor([True, False, True, False]),
                        jitter=no, order=torch.arange(4).repeat(n, 1), factors=torch.ones(n, 4),
                        gray=torch.tensor([True, True, False, False]), blur=no, sigma=torch.ones(n),
                        solarize=torch.tensor([True, False, False, True]))
    ours = GpuMultiCrop(OFFICIAL, "cpu").augment(x, params)
    for k in range(n):
        ref = x[k]
        ref = TF.hflip(ref) if params.flip[k] else ref
        ref = TF.rgb_to_grayscale(ref, num_output_channels=3) if params.gray[k] else ref
        ref = TF.solarize(ref, 128 / 255) if params.solarize[k] else ref
        ref = TF.normalize(ref, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        torch.testing.assert_close(ours[k], ref, atol=1e-4 / 0.224 + 1e-6, rtol=0)  # grey weights / smallest std


@needs_kornia
@pytest.mark.parametrize("radius", [0.1, 0.3, 0.7, 1.0, 1.6, 2.0])
def test_blur_matches_pil_gaussian_blur(radius):
    import kornia

    from dino_model.data.gpu_crops import blur_kernel_size, gaussian_blur

    array = _image(48, 48)
    x = _tensor(array)[None]
    pil = _tensor(np.asarray(Image.fromarray(array).filter(ImageFilter.GaussianBlur(radius))))[None]
    ours = gaussian_blur(x, torch.tensor([True]), torch.tensor([radius]), blur_kernel_size(2.0), kornia)
    diff = (ours - pil).abs()
    # PIL runs six 1-D passes (three box blurs, each way) and rounds to uint8 after each: at most half a grey level
    # per pass, and the later passes average earlier errors without amplifying them, so <= 3 grey levels inside;
    # within 6 pixels of a border PIL re-extends the edge at every pass, which a single padded filter cannot copy
    interior = diff[..., 6:-6, 6:-6]
    assert interior.max() <= 3 / 255 + 1e-6
    assert diff.mean() <= 1 / 255
    if radius >= 1:
        assert (pil - x).abs().mean() > 10 * diff.mean()  # a real blur, matched much closer than its own size


# ---- whole batches ------------------------------------------------------------------------------------------


def _encode(array: np.ndarray, fmt: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format=fmt)
    return out.getvalue()


def _batch(encoded: list[bytes], seeds: list[int]) -> dict:
    return {"encoded": encoded, "seed": torch.tensor(seeds), "path": [f"img{k}" for k in range(len(encoded))]}


@needs_kornia
def test_output_shapes_dtypes_and_normalisation():
    from dino_model.data.gpu_crops import GpuMultiCrop

    cfg = CropConfig(global_size=32, local_size=16, local_crops_number=3, color_jitter_p=0.0, solarize_p=0.0)
    grey = np.full((30, 50, 3), 100, dtype=np.uint8)  # flat grey: unchanged by crop, flip, grayscale and blur
    crops, failed = GpuMultiCrop(cfg, "cpu")(_batch([_encode(grey, "PNG"), _encode(_image(41, 23), "JPEG")], [1, 2]))
    assert failed == 0
    assert [tuple(c.shape) for c in crops] == [(2, 3, 32, 32)] * 2 + [(2, 3, 16, 16)] * 3
    assert all(c.dtype == torch.float32 and torch.isfinite(c).all() for c in crops)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    for crop in crops:
        expected = ((100 / 255 - mean) / std).view(3, 1, 1).expand(3, crop.shape[-1], crop.shape[-1])
        torch.testing.assert_close(crop[0], expected, atol=1e-5, rtol=0)
        pixels = crop[1] * std.view(3, 1, 1) + mean.view(3, 1, 1)
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


@needs_kornia
def test_crops_and_augmentation_never_wait_for_the_device():
    """On the meta device any read of a device value (item, nonzero, a bool of a device tensor) raises:
    on CUDA each such read would stall the host until the GPU catches up."""
    from dino_model.data.gpu_crops import GpuMultiCrop

    transform = GpuMultiCrop(OFFICIAL, "meta")
    shapes = [(375, 500), (40, 400), (500, 333)]
    images = [torch.empty(3, h, w, dtype=torch.uint8, device="meta") for h, w in shapes]
    specs = transform.specs
    params = crop_params(draw_uniforms([3, 4, 5], len(specs)), torch.tensor(shapes), specs, OFFICIAL)
    crops = transform.crops(images, params)
    assert [(c.device.type, tuple(c.shape)) for c in crops] == [("meta", (3, 3, 224, 224))] * 2 + [
        ("meta", (3, 3, 96, 96))] * 10


@needs_kornia
def test_crops_depend_on_the_image_seed_only():
    from dino_model.data.gpu_crops import GpuMultiCrop

    transform = GpuMultiCrop(CropConfig(global_size=32, local_size=16, local_crops_number=2), "cpu")
    a, b = _encode(_image(40, 60, 1), "JPEG"), _encode(_image(50, 40, 2), "PNG")
    first, _ = transform(_batch([a, b], [11, 22]))
    swapped, _ = transform(_batch([b, a], [22, 11]))
    other, _ = transform(_batch([a, b], [12, 22]))
    for crop_first, crop_swapped, crop_other in zip(first, swapped, other, strict=True):
        torch.testing.assert_close(crop_first[0], crop_swapped[1], atol=0, rtol=0)
        torch.testing.assert_close(crop_first[1], crop_swapped[0], atol=0, rtol=0)
        torch.testing.assert_close(crop_first[1], crop_other[1], atol=0, rtol=0)
    assert any((f[0] - o[0]).abs().max() > 0.1 for f, o in zip(first, other, strict=True))


@needs_kornia
def test_an_undecodable_image_is_replaced_by_the_next_and_counted(caplog):
    from dino_model.data.gpu_crops import GpuMultiCrop, decode_batch

    good = _encode(_image(20, 30), "JPEG")
    truncated = good[: len(good) // 2]
    images, failed = decode_batch([truncated, good], ["bad.jpg", "good.jpg"], torch.device("cpu"))
    assert failed == 1 and "bad.jpg" in caplog.text
    assert torch.equal(images[0], images[1])
    crops, failed = GpuMultiCrop(CropConfig(global_size=16, local_size=8, local_crops_number=1), "cpu")(
        _batch([good, truncated], [1, 2]))
    assert failed == 1 and crops[0].shape[0] == 2
    with pytest.raises(DataError, match="no image of the batch decodes"):
        decode_batch([truncated, b"not an image"], ["a.jpg", "b.jpg"], torch.device("cpu"))


# ---- the dataset, the config, training ----------------------------------------------------------------------


def _folder(root: Path, n: int = 16) -> Path:
    for k in range(n):
        cls = root / f"c{k % 2}"
        cls.mkdir(parents=True, exist_ok=True)
        fmt, ext = [("JPEG", "jpg"), ("PNG", "png"), ("BMP", "bmp")][k % 3]
        Image.fromarray(_image(24 + k, 36, k)).save(cls / f"{k:02d}.{ext}", format=fmt)
    return root


def test_items_are_encoded_bytes_seeded_like_the_pil_dataset(tmp_path):
    images = ImageFolderDataset(_folder(tmp_path))
    encoded = SeededEncodedDataset(images, seed=5)
    encoded.set_epoch(3)

    class RecordSeed:
        def __call__(self, image):
            return [torch.tensor(torch.initial_seed())]

    pil = SeededMultiCropDataset(images, RecordSeed(), seed=5)  # type: ignore[arg-type]
    pil.set_epoch(3)
    for index in range(len(images)):
        item, label, skipped = encoded[index]
        assert item["seed"] == pil[index][0][0].item() and skipped == 0
        assert label == images.samples[index].label and item["path"] == str(images.samples[index].path)
        decoded = np.asarray(Image.open(io.BytesIO(item["encoded"])).convert("RGB"))
        assert np.array_equal(decoded, np.asarray(images.load(index)))  # BMP comes as lossless PNG


def test_a_file_corrupted_after_the_scan_is_skipped_with_the_original_seed(tmp_path):
    images = ImageFolderDataset(_folder(tmp_path))
    images.samples[4].path.write_bytes(b"\xff\xd8\xff but nothing else")  # starts like a JPEG
    images.samples[5].path.write_bytes(b"garbage")
    dataset = SeededEncodedDataset(images, seed=0)
    item, _, skipped = dataset[5]
    assert skipped == 1 and item["path"] == str(images.samples[6].path)
    item, _, skipped = dataset[4]
    # looks like a JPEG, but the worker reads every header (for the pixel cap): skipped there, with 5
    assert skipped == 2 and item["path"] == str(images.samples[6].path)
    assert item["seed"] == SeededEncodedDataset(images, seed=0)[4][0]["seed"] != dataset[6][0]["seed"]


def test_backend_is_validated_and_needs_kornia(monkeypatch):
    assert load_config("tiny").crops.backend == "pil"
    with pytest.raises(ConfigError, match="crops.backend='dali' is not one of pil, gpu"):
        load_config("tiny", overrides=["crops.backend=dali"])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "kornia" else real(name, *a))
    with pytest.raises(ConfigError, match=r"needs kornia.*dino-mlops\[gpu-aug\]"):
        load_config("tiny", overrides=["crops.backend=gpu"])


@needs_kornia
def test_pretraining_with_the_gpu_backend_on_cpu_trains_and_resumes_exactly(tmp_path):
    from dino_model.runtime.checkpoint import load_checkpoint
    from dino_model.train.loop import fit

    root = _folder(tmp_path / "data")

    def cfg(run: str, *extra: str):
        return load_config("tiny", overrides=[f"data.root={root}", f"train.output_dir={tmp_path / run}",
                                              "model.out_dim=128", "train.batch_size=4", "crops.backend=gpu",
                                              "train.epochs=2", *extra])

    full = fit(cfg("full"))
    fit(cfg("split", "train.stop_after_epochs=1"))
    fit(cfg("split"), resume=True)
    metrics = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [m["steps"] for m in metrics] == [4, 4] and all(math.isfinite(m["loss"]) for m in metrics)
    assert all(m["skipped_in_epoch"] == 0 for m in metrics)
    whole = load_checkpoint(tmp_path / "full" / "checkpoint.pth")["student"]
    resumed = load_checkpoint(tmp_path / "split" / "checkpoint.pth")["student"]
    assert full.epochs_done == 2
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


@needs_kornia
def test_shards_stream_encoded_bytes_seeded_by_folder_index_and_train(tmp_path):
    from dino_model.data.seeding import item_seed
    from dino_model.data.shards import pack_folder
    from dino_model.data.sources import build_train_data
    from dino_model.train.loop import fit

    root = _folder(tmp_path / "data")
    folder = ImageFolderDataset(root)
    pack_folder(root, tmp_path / "shards", max_per_shard=5)
    _, stream, loader, _ = build_train_data(str(tmp_path / "shards"), None, seed=3, batch_size=4, rank=0,
                                            world_size=1, encoded=True)
    stream.set_epoch(1)
    items = list(stream)
    assert len(items) == len(loader) * 4 == 16
    for item, label, skipped in items:
        index = int(item["path"].rsplit(":", 1)[1].split(".")[0])
        sample = folder.samples[index]
        assert item["seed"] == item_seed(3, 1, index) and label == sample.label and skipped == 0
        if sample.path.suffix in (".jpg", ".png"):
            assert item["encoded"] == sample.path.read_bytes()
    cfg = load_config("tiny", overrides=[f"data.root={tmp_path / 'shards'}", f"train.output_dir={tmp_path / 'run'}",
                                         "model.out_dim=128", "train.batch_size=4", "crops.backend=gpu",
                                         "train.epochs=1"])
    result = fit(cfg)
    assert result.epochs_done == 1 and math.isfinite(result.final_metrics["loss"])
