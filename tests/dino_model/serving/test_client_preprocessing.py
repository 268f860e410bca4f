"""The client's torch-free steps against PyTorch: PIL + numpy preprocessing equals torchvision's
evaluation transform, and the numpy k-NN vote equals dino_model.eval.knn's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from dino_model.config import EvalConfig
from dino_model.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform
from dino_model.errors import ConfigError
from dino_model.eval.knn import weighted_vote as torch_weighted_vote
from dino_model.export.contract import ModelContract
from dino_model.serving.images import Preprocess, transform_for
from dino_model.serving.inference import EmbeddingResult, predict_labels, weighted_vote_numpy

# (width, height): square, landscape, portrait, odd sizes, an extreme strip, already at the resize size
SIZES = [(32, 32), (50, 20), (20, 50), (37, 41), (8, 100), (301, 199), (36, 60)]


def noise_image(width: int, height: int, seed: int) -> Image.Image:
    """Random RGB pixels: every resampling difference shows (a flat image would hide them)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def torchvision_transform(image_size: int, resize_size: int, mean, std) -> T.Compose:
    return T.Compose([T.Resize(resize_size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(image_size),
                      T.ToTensor(), T.Normalize(mean, std)])


@pytest.mark.parametrize("size", SIZES)
def test_preprocessing_equals_the_evaluation_transform(size: tuple[int, int]) -> None:
    image = noise_image(*size, seed=sum(size))
    ours = Preprocess(32, 36, IMAGENET_MEAN, IMAGENET_STD)(image)
    reference = eval_transform(EvalConfig(image_size=32, resize_size=36))(image).numpy()
    assert ours.dtype == np.float32 and ours.shape == reference.shape == (3, 32, 32)
    assert np.abs(ours - reference).max() <= 1e-6


@pytest.mark.parametrize(("image_size", "resize_size", "size"), [
    (224, 256, (500, 375)),  # ImageNet's evaluation sizes on a typical photo
    (224, 256, (375, 500)),
    (32, 24, (50, 20)),  # a crop larger than the resized image: zero padding, then the crop
    (33, 40, (64, 47)),  # odd crop: the rounding of the crop offset
])
def test_preprocessing_equals_torchvision_at_other_sizes_and_statistics(image_size: int, resize_size: int,
                                                                       size: tuple[int, int]) -> None:
    mean, std = (0.5, 0.25, 0.125), (0.2, 0.3, 0.4)
    image = noise_image(*size, seed=image_size + resize_size)
    ours = Preprocess(image_size, resize_size, mean, std)(image)
    reference = torchvision_transform(image_size, resize_size, mean, std)(image).numpy()
    assert ours.shape == reference.shape == (3, image_size, image_size)
    assert np.abs(ours - reference).max() <= 1e-6


def test_the_contract_sets_sizes_and_statistics() -> None:
    contract = ModelContract(image_size=24, resize_size=28, embed_dim=8, mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5))
    assert transform_for(contract) == Preprocess(24, 28, (0.1, 0.2, 0.3), (0.5, 0.5, 0.5))
    image = noise_image(40, 30, seed=3)
    reference = torchvision_transform(24, 28, contract.mean, contract.std)(image).numpy()
    assert np.abs(transform_for(contract)(image) - reference).max() <= 1e-6


@pytest.mark.parametrize(("n", "k", "classes", "temperature"), [(1, 1, 2, 0.07), (9, 5, 4, 0.07), (17, 20, 10, 0.5)])
def test_the_numpy_vote_equals_the_evaluation_vote(n: int, k: int, classes: int, temperature: float) -> None:
    rng = np.random.default_rng(n + k)
    sims = rng.uniform(-1, 1, (n, k)).astype(np.float32)
    labels = rng.integers(0, classes, (n, k))
    ours = weighted_vote_numpy(sims, labels, classes, temperature)
    reference = torch_weighted_vote(torch.from_numpy(sims), torch.from_numpy(labels), classes, temperature).numpy()
    assert ours.dtype == np.float32 and ours.shape == (n, classes)
    np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=0)


def test_the_vote_by_hand() -> None:
    """Neighbours (0.5, class 1), (0.2, class 1), (0.4, class 0) at T = 0.1: e^5 + e^2 for class 1, e^4 for 0."""
    votes = weighted_vote_numpy(np.array([[0.5, 0.2, 0.4]]), np.array([[1, 1, 0]]), 3, 0.1)
    np.testing.assert_allclose(votes, [[np.exp(4), np.exp(5) + np.exp(2), 0.0]], rtol=1e-12)


def _normalised(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_knn_labels_equal_the_torch_top_k_vote(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    bank, queries = _normalised(rng, 60, 16), _normalised(rng, 25, 16)
    labels, classes = rng.integers(0, 5, 60), np.array(list("abcde"))
    np.savez(tmp_path / "index.npz", embeddings=bank, labels=labels, classes=classes)
    result = EmbeddingResult([f"q{i}" for i in range(25)], [""] * 25, queries)
    for k in (1, 7, 60, 100):
        sims, idx = (torch.from_numpy(queries) @ torch.from_numpy(bank).T).topk(min(k, 60), dim=1)
        votes = torch_weighted_vote(sims, torch.from_numpy(labels)[idx], 5, 0.07)
        expected = [str(classes[i]) for i in votes.argmax(dim=1).tolist()]
        assert predict_labels(result, tmp_path / "index.npz", k=k, temperature=0.07) == expected
    with pytest.raises(ConfigError, match="k >= 1"):
        predict_labels(result, tmp_path / "index.npz", k=0)
