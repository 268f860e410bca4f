"""The drift statistic: MMD^2 against hand-written loops, and on real embeddings of the session's tiny model.

In-distribution windows (digits the reference did not sample) must stay below the calibrated
threshold; windows of darkened, blurred or noised digits, passed through the same model, must cross it.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter

from dino_model.errors import ConfigError
from dino_model.monitoring.drift import (
    DRIFTED_SHARE,
    WINDOW,
    DriftMonitor,
    DriftReference,
    batch_drift,
    build_reference,
    drift_path,
    drift_ratio,
    l2_normalise,
    median_bandwidth,
    mmd2_unbiased,
    window_mmd2,
)

logger = logging.getLogger(__name__)
STEP = 16  # requests between two looks at the window (the served statistic's update interval)
PARTITIONS = 4  # draws of the reference (training half) and held-out half of the digits
ORDERS = 10  # held-out streams in different orders: many windows, so the fraction of alarms is stable


def _k(a: list[float], b: list[float], s: float) -> float:
    return math.exp(-sum((p - q) ** 2 for p, q in zip(a, b, strict=True)) / (2 * s * s))


def _mmd2_loops(x: list[list[float]], y: list[list[float]], s: float) -> float:
    """Gretton et al.'s unbiased MMD^2, term by term."""
    m, n = len(x), len(y)
    xx = sum(_k(x[i], x[j], s) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(_k(y[i], y[j], s) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(_k(x[i], y[j], s) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_mmd2_matches_direct_loops() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((5, 3)), rng.standard_normal((4, 3)) + 0.5
    assert mmd2_unbiased(x, y, 0.9) == pytest.approx(_mmd2_loops(x.tolist(), y.tolist(), 0.9), rel=1e-12)
    assert mmd2_unbiased(x, x, 0.9) < 0  # unbiased: identical samples give a slightly negative value


def test_median_bandwidth_and_window_statistic_by_hand() -> None:
    pts = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])  # distances 3, 4, 5
    assert median_bandwidth(pts) == 4.0
    rng = np.random.default_rng(2)
    train, window = rng.standard_normal((40, 6)), rng.standard_normal((10, 6)) * 3
    ref = build_reference(train, size=20, window=8, n_permutations=20)
    expected = _mmd2_loops(l2_normalise(window).tolist(), ref.sample.astype(np.float64).tolist(), ref.bandwidth)
    assert window_mmd2(window, ref) == pytest.approx(expected, rel=1e-5)
    assert median_bandwidth(ref.sample.astype(np.float64)) == pytest.approx(ref.bandwidth)


def test_reference_round_trip_and_bad_input(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    ref = build_reference(rng.standard_normal((30, 4)), size=16, window=100, n_permutations=10)
    assert ref.window == 8 and ref.sample.shape == (16, 4)  # the window shrinks to half the sample
    assert np.allclose(np.linalg.norm(ref.sample, axis=1), 1, atol=1e-6)
    loaded = DriftReference.load(ref.save(tmp_path / "m.drift.npz"))
    assert loaded.threshold == ref.threshold and np.array_equal(loaded.sample, ref.sample)
    assert drift_path("/x/model.fp16.onnx") == Path("/x/model.drift.npz")
    with pytest.raises(ConfigError, match="NaN"):
        build_reference(np.full((8, 2), np.nan))
    with pytest.raises(ConfigError, match="identical"):
        build_reference(np.ones((8, 2)))
    (tmp_path / "bad.npz").write_bytes(b"not a npz")
    with pytest.raises(ConfigError, match="cannot read the drift reference"):
        DriftReference.load(tmp_path / "bad.npz")


def test_monitor_updates_every_n_and_waits_for_a_full_window() -> None:
    rng = np.random.default_rng(4)
    ref = build_reference(rng.standard_normal((64, 4)), size=64, window=8, n_permutations=10)
    monitor = DriftMonitor(ref, update_every=4)
    assert monitor.add(rng.standard_normal((7, 4))) is None
    first = monitor.add(rng.standard_normal((1, 4)))
    assert first is not None
    assert monitor.add(rng.standard_normal((3, 4)) + 5) == first  # 3 < 4 new embeddings: not recomputed
    assert monitor.add(rng.standard_normal((1, 4)) + 5) != first
    assert monitor.value == pytest.approx(window_mmd2(np.stack(monitor._window), ref))



def test_drift_ratio_is_the_window_mmd2_over_the_threshold_and_unknown_below_a_window() -> None:
    rng = np.random.default_rng(5)
    ref = build_reference(rng.standard_normal((64, 4)), size=64, window=8, n_permutations=10)
    window = rng.standard_normal((8, 4)) + 2
    score = drift_ratio(window, ref)
    assert score["mmd2"] == pytest.approx(window_mmd2(window, ref))
    assert score["ratio"] == pytest.approx(score["mmd2"] / ref.threshold) and score["ratio"] > 1
    assert (score["images"], score["windows"], score["threshold"]) == (8, 1, ref.threshold)
    assert drift_ratio(window[:7], ref) is None


# --- real embeddings of the tiny model -------------------------------------------------------------

def _darken(img: Image.Image) -> Image.Image:
    return ImageEnhance.Brightness(img).enhance(0.3)


def _blur(img: Image.Image) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(2))


def _noise(img: Image.Image) -> Image.Image:
    pixels = np.asarray(img, dtype=np.float32) + np.random.default_rng(0).normal(0, 60, (img.height, img.width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _embed(checkpoint: Path, root: Path, shift=None) -> np.ndarray:
    import torch
    from torch.utils.data import DataLoader
    from torchvision import transforms as T

    from dino_model.config import config_from_dict
    from dino_model.data.datasets import ImageFolderDataset
    from dino_model.data.transforms import eval_transform
    from dino_model.eval.features import extract
    from dino_model.models.loading import load_backbone
    from dino_model.runtime.checkpoint import load_checkpoint

    cfg = config_from_dict(load_checkpoint(checkpoint)["config"]).eval
    backbone, _ = load_backbone(checkpoint)
    transform = eval_transform(cfg) if shift is None else T.Compose([shift, eval_transform(cfg)])
    loader = DataLoader(ImageFolderDataset(root, transform=transform), batch_size=256)
    torch.manual_seed(0)
    features, _ = extract(backbone, loader)
    return features.numpy()


@pytest.fixture(scope="module")
def digits_embeddings(tiny_checkpoint: Path, digits_root: Path) -> dict[str, np.ndarray]:
    """Embeddings of every digit ("clean") and of the val digits darkened, blurred and noised."""
    clean = np.concatenate([_embed(tiny_checkpoint, digits_root / s) for s in ("train", "val")])
    shifted = {name: _embed(tiny_checkpoint, digits_root / "val", fn)
               for name, fn in (("darkened", _darken), ("blurred", _blur), ("noised", _noise))}
    return {"clean": clean, **shifted}


def _split(clean: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training half for the reference, held-out half) of the digits' embeddings."""
    order = np.random.default_rng(seed).permutation(len(clean))
    return clean[order[len(clean) // 2:]], clean[order[:len(clean) // 2]]


def _stream(reference: DriftReference, embeddings: np.ndarray) -> list[float]:
    """The statistic every STEP requests once the window is full, as the server computes it."""
    monitor = DriftMonitor(reference, update_every=STEP)
    return [v for i in range(0, len(embeddings), STEP) if (v := monitor.add(embeddings[i:i + STEP])) is not None]


def test_in_distribution_windows_stay_below_the_threshold(digits_embeddings) -> None:
    """Over several draws of the reference (the bound is on average over them), >= 95% of windows stay below."""
    below = []
    for seed in range(PARTITIONS):
        train, held_out = _split(digits_embeddings["clean"], seed)
        ref, rng = build_reference(train, window=WINDOW), np.random.default_rng(seed)
        values = np.concatenate([_stream(ref, held_out[rng.permutation(len(held_out))]) for _ in range(ORDERS)])
        below.append(values <= ref.threshold)
        logger.info("in-distribution, reference %d: %d windows of %d, %.1f%% below threshold %.3g (max %.3g, "
                    "median %.3g)", seed, len(values), WINDOW, 100 * below[-1].mean(), ref.threshold, values.max(),
                    np.median(values))
    pooled = float(np.concatenate(below).mean())
    logger.info("in-distribution: %.1f%% of %d windows below the threshold", 100 * pooled, sum(map(len, below)))
    assert sum(map(len, below)) >= 1000
    assert pooled >= 0.95


@pytest.mark.parametrize("shift", ["darkened", "blurred", "noised"])
def test_a_shifted_stream_crosses_the_threshold_quickly(digits_embeddings, shift: str) -> None:
    train, held_out = _split(digits_embeddings["clean"], 0)
    ref = build_reference(train, window=WINDOW)
    clean, shifted = held_out[:WINDOW], digits_embeddings[shift]
    values = _stream(ref, np.concatenate([clean, shifted]))
    assert values[0] <= ref.threshold  # the clean window before the shift starts
    crossed = next((i for i, v in enumerate(values) if v > ref.threshold), None)
    assert crossed is not None, f"{shift}: never crossed {ref.threshold:.3g} (max {max(values):.3g})"
    requests = crossed * STEP
    logger.info("%s: crossed after %d shifted requests (MMD^2 %.3g, threshold %.3g, final %.3g)", shift, requests,
                values[crossed], ref.threshold, values[-1])
    assert requests <= WINDOW  # at the latest when the window holds only shifted embeddings


def test_batch_drift_passes_held_out_digits_in_folder_order_and_flags_each_shift(digits_embeddings) -> None:
    """A whole set scored at once (`infer --drift-reference`): held-out digits pass, each shift is flagged."""
    n_val = len(digits_embeddings["darkened"])
    train, val = digits_embeddings["clean"][:-n_val], digits_embeddings["clean"][-n_val:]  # the folders' images
    ref = build_reference(train, window=WINDOW)
    clean = batch_drift(val, ref)
    assert clean["windows"] == len(val) // WINDOW and clean["left_out"] == len(val) % WINDOW
    assert not clean["drifted"] and clean["drifted_windows"] <= DRIFTED_SHARE * clean["windows"]
    for shift in ("darkened", "blurred", "noised"):
        report = batch_drift(digits_embeddings[shift], ref)
        assert report["drifted"] and report["mmd2_median"] > ref.threshold, (shift, report)
    with pytest.raises(ConfigError, match="do not match the drift reference's width"):
        batch_drift(val[:, :10], ref)


def test_batch_drift_scores_a_class_sorted_set_as_the_mixture_it_is() -> None:
    """Two well-separated classes, the set sorted by class: windows in that order would each hold one class."""
    rng = np.random.default_rng(0)
    centres = l2_normalise(rng.standard_normal((2, 16)))

    def draw(n: int) -> np.ndarray:
        return l2_normalise(np.repeat(centres, n // 2, axis=0) + 0.05 * rng.standard_normal((n, 16)))

    ref = build_reference(draw(512), window=WINDOW)
    report = batch_drift(draw(640), ref)  # class 0 first, then class 1
    assert report["windows"] == 10 and not report["drifted"], report
    in_order = [window_mmd2(draw(640)[i * WINDOW:(i + 1) * WINDOW], ref) for i in range(10)]
    assert min(in_order) > ref.threshold  # what consecutive windows of the sorted set would have said
