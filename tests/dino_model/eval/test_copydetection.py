"""GeM, PCA whitening, the seeded edits and copy-detection scoring, against hand and NumPy references."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from dino_model.errors import ConfigError
from dino_model.eval.copydetection import (
    EDIT_FUNCTIONS,
    cls_gem_embedding,
    fit_whitening,
    gem,
    make_queries,
    score_copies,
)
from dino_model.eval.search_settings import COPY_EDITS, CopyDetectionConfig
from dino_model.models.backbone import intermediate_tokens


def shapes_image(seed: int, size: int = 48) -> Image.Image:
    """A random background with four random ellipses and rectangles."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = (int(v) for v in rng.integers(0, size - 8, 2))
        box = (x0, y0, x0 + int(rng.integers(4, size // 2)), y0 + int(rng.integers(4, size // 2)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    return img


def png_bytes(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def test_gem_by_hand():
    tokens = torch.tensor([[[1.0, 2.0], [3.0, -5.0]]])  # (B=1, N=2, D=2); negatives clamp to eps
    expected = torch.tensor([[((1 + 81) / 2) ** 0.25, ((16 + 1e-24) / 2) ** 0.25]])
    torch.testing.assert_close(gem(tokens, p=4), expected)
    torch.testing.assert_close(gem(tokens.abs(), p=1), tokens.abs().mean(dim=1))  # p = 1: the mean
    big = gem(tokens.abs().double(), p=64)  # p -> inf: the max (here within 2^(-1/64))
    torch.testing.assert_close(big, tokens.abs().double().amax(dim=1), rtol=2e-2, atol=0)


def test_cls_gem_embedding_is_cls_then_numpy_gem(random_checkpoint):
    from dino_model.models.loading import load_backbone

    backbone, _ = load_backbone(random_checkpoint)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = cls_gem_embedding(backbone, x, p=4)
        tokens = intermediate_tokens(backbone, x, 1)[0].numpy()
    d = tokens.shape[-1]
    assert out.shape == (3, 2 * d)
    np.testing.assert_allclose(out[:, :d].numpy(), tokens[:, 0], rtol=1e-6)
    reference = (np.maximum(tokens[:, 1:], 1e-6) ** 4).mean(axis=1) ** 0.25
    np.testing.assert_allclose(out[:, d:].numpy(), reference, rtol=1e-5)


def correlated(n: int, d: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) * np.linspace(0.1, 3.0, d)
    return torch.from_numpy(rng.normal(size=(n, d)) @ mixing + rng.normal(size=d) * 5)


def test_whitened_learning_set_has_identity_covariance():
    x = correlated(500, 8)
    w = fit_whitening(x)
    z = w.apply(x).double().numpy()
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(z.T @ z / len(z), np.eye(8), atol=1e-5)
    assert w.kept_energy == pytest.approx(1.0)


def test_whitened_inner_products_match_numpy_mahalanobis():
    # sign and order of eigenvectors are arbitrary; inner products after whitening are not
    x, y = correlated(300, 6), correlated(5, 6, seed=1)
    xn, yn = x.numpy(), y.numpy()
    mean = xn.mean(axis=0)
    cov = (xn - mean).T @ (xn - mean) / len(xn)
    expected = (yn - mean) @ np.linalg.inv(cov) @ (yn - mean).T
    wy = fit_whitening(x).apply(y).double().numpy()
    np.testing.assert_allclose(wy @ wy.T, expected, rtol=1e-4, atol=1e-4)
    # power 0: a rotation onto the principal axes, so distances are unchanged
    ry = fit_whitening(x, power=0.0).apply(y).double().numpy()
    np.testing.assert_allclose(np.linalg.norm(ry[0] - ry[1]), np.linalg.norm(yn[0] - yn[1]), rtol=1e-5)


def test_whitening_keeps_at_most_the_learning_rank():
    assert fit_whitening(correlated(5, 8)).projection.shape == (4, 8)  # 5 centred samples span 4 directions
    assert fit_whitening(correlated(50, 8), dim=3).projection.shape == (3, 8)
    z = fit_whitening(correlated(50, 8), dim=3).apply(correlated(50, 8)).double().numpy()
    np.testing.assert_allclose(z.T @ z / 50, np.eye(3), atol=1e-5)  # the kept components stay whitened


def test_edits_are_deterministic_given_a_seed_and_change_the_image():
    originals, donors = [shapes_image(i) for i in range(3)], [shapes_image(10), shapes_image(11)]
    a = make_queries(originals, donors, COPY_EDITS, seed=0)
    b = make_queries(originals, donors, COPY_EDITS, seed=0)
    c = make_queries(originals, donors, COPY_EDITS, seed=1)
    assert [(q.source, q.edit) for q in a] == [(i, e) for i in range(3) for e in COPY_EDITS]
    assert all(png_bytes(p.image) == png_bytes(q.image) for p, q in zip(a, b, strict=True))
    assert sum(png_bytes(p.image) != png_bytes(q.image) for p, q in zip(a, c, strict=True)) >= len(a) - 1
    assert all(png_bytes(q.image) != png_bytes(originals[q.source]) for q in a)
    # a query depends on (seed, original's index, edit) only, not on the other originals or edits asked for
    again = make_queries(originals[:1], donors, ["patch", "jpeg"], seed=0)
    assert png_bytes(again[1].image) == png_bytes(a[COPY_EDITS.index("jpeg")].image)


def test_edit_names_are_checked():
    assert tuple(EDIT_FUNCTIONS) == COPY_EDITS
    with pytest.raises(ConfigError, match="blur"):
        make_queries([shapes_image(0)], [shapes_image(1)], ["jpeg", "blur"], seed=0)


def pixels(images) -> torch.Tensor:
    """The identity feature extractor: 12 x 12 RGB pixels, flattened."""
    return torch.stack([torch.from_numpy(np.asarray(im.resize((12, 12), Image.Resampling.BILINEAR),
                                                    dtype=np.float32).reshape(-1)) for im in images])


@pytest.mark.parametrize("whiten", [False, True])
def test_copy_scores_match_a_brute_force_search_on_pixels(whiten):
    originals, distractors = [shapes_image(i) for i in range(10)], [shapes_image(100 + i) for i in range(20)]
    queries = make_queries(originals, distractors, ["jpeg", "text", "crop"], seed=0)
    q_x, o_x, d_x = pixels([q.image for q in queries]), pixels(originals), pixels(distractors)
    settings = CopyDetectionConfig(whiten_dim=None)
    result = score_copies(q_x, [q.source for q in queries], [q.edit for q in queries], o_x, d_x, settings,
                          whiten=whiten)
    # brute force in NumPy: whiten (same learned operator), normalise, rank the original among all
    db = torch.cat([o_x, d_x])
    if whiten:
        assert result.whitening is not None and result.whitening.projection.shape[0] == 19
        q_x, db = result.whitening.apply(q_x), result.whitening.apply(db)
    qn = q_x.double().numpy() / np.linalg.norm(q_x.double().numpy(), axis=1, keepdims=True)
    dn = db.double().numpy() / np.linalg.norm(db.double().numpy(), axis=1, keepdims=True)
    sims = qn @ dn.T
    ranks = np.array([(sims[i] > sims[i, q.source]).sum() for i, q in enumerate(queries)])
    assert result.scores.first.tolist() == ranks.tolist()
    metrics = result.metrics()
    assert metrics["copydetection_recall_at_1"] == pytest.approx(100 * (ranks == 0).mean())
    ap = np.where(ranks == 0, 1.0, 1 / (2 * (ranks + 1)))  # one positive: trapezoid (0 + 1/(r+1)) / 2
    assert metrics["copydetection_map"] == pytest.approx(100 * ap.mean())
    jpeg = np.array([q.edit == "jpeg" for q in queries])
    assert metrics["copydetection_recall_at_1_jpeg"] == pytest.approx(100 * (ranks[jpeg] == 0).mean())
    assert metrics["copydetection_recall_at_1_jpeg"] >= 90  # low-quality JPEG keeps the coarse pixels
