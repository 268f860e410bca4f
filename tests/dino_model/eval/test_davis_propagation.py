"""Label propagation against loop-form versions of the official code, plus pre-processing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dino_model.errors import ConfigError
from dino_model.eval.davis.config import PropagationParams
from dino_model.eval.davis.frames import first_labels, labels_to_mask, normalise_channels, target_size
from dino_model.eval.davis.propagation import neighbourhood_mask, propagate_frame, propagate_video


def loop_neighbourhood(h: int, w: int, size: int) -> torch.Tensor:
    """The official `restrict_neighborhood`, 4-deep loop and all."""
    mask = torch.zeros(h, w, h, w)
    for i in range(h):
        for j in range(w):
            for p in range(2 * size + 1):
                for q in range(2 * size + 1):
                    if 0 <= i - size + p < h and 0 <= j - size + q < w:
                        mask[i, j, i - size + p, j - size + q] = 1
    return mask.reshape(h * w, h * w).bool()


@pytest.mark.parametrize(("h", "w", "radius"), [(3, 4, 1), (5, 7, 2), (6, 6, 12)])
def test_neighbourhood_matches_official_loop(h: int, w: int, radius: int) -> None:
    assert torch.equal(neighbourhood_mask(h, w, radius), loop_neighbourhood(h, w, radius))


def loop_propagate(target, sources, labels, mask, topk, temperature) -> torch.Tensor:
    """Per target patch: weights over every source of every context frame, official order of steps."""
    n_ctx, hw, _ = sources.shape
    out = torch.zeros(labels.shape[1], target.shape[0], dtype=torch.float64)
    for t in range(target.shape[0]):
        weights = []
        for c in range(n_ctx):
            for s in range(hw):
                value = torch.exp(torch.dot(target[t], sources[c, s]) / temperature).item()
                weights.append(value * (1.0 if mask is None or mask[t, s] else 0.0))
        weights = torch.tensor(weights, dtype=torch.float64)
        kth = sorted(weights.tolist(), reverse=True)[topk - 1]
        weights = torch.where(weights < kth, 0.0, weights)
        weights = weights / weights.sum()
        flat_labels = labels.permute(1, 0, 2).reshape(labels.shape[1], -1).double()
        out[:, t] = flat_labels @ weights
    return out


@pytest.mark.parametrize(("h", "w", "n_ctx", "radius", "topk", "chunk"), [
    (3, 4, 1, 1, 5, 1024), (4, 5, 3, 1, 5, 7), (5, 5, 8, 12, 3, 4), (4, 6, 2, 0, 1, 1024)])
def test_propagate_frame_matches_loop_reference(h, w, n_ctx, radius, topk, chunk) -> None:
    gen = torch.Generator().manual_seed(h * 100 + w)
    dim, classes = 6, 3
    target = F.normalize(torch.randn(h * w, dim, generator=gen, dtype=torch.float64), dim=1)
    sources = F.normalize(torch.randn(n_ctx, h * w, dim, generator=gen, dtype=torch.float64), dim=2)
    labels = torch.rand(n_ctx, classes, h * w, generator=gen, dtype=torch.float64)
    mask = neighbourhood_mask(h, w, radius) if radius > 0 else None
    params = PropagationParams(topk=topk, chunk_size=chunk)
    got = propagate_frame(target, sources, labels, params=params, mask=mask)
    expected = loop_propagate(target, sources, labels, mask, topk, params.temperature)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_topk_is_joint_over_context_frames_and_weights_sum_to_one() -> None:
    h, w, n_ctx = 4, 4, 3
    gen = torch.Generator().manual_seed(0)
    target = F.normalize(torch.randn(h * w, 5, generator=gen), dim=1)
    sources = F.normalize(torch.randn(n_ctx, h * w, 5, generator=gen), dim=2)
    # Label each source with its own channel: the output is then the weight matrix itself.
    identity = torch.eye(n_ctx * h * w).reshape(n_ctx * h * w, n_ctx, h * w).permute(1, 0, 2)
    weights = propagate_frame(target, sources, identity, params=PropagationParams(topk=5), mask=None)
    assert torch.equal((weights > 0).sum(dim=0), torch.full((h * w,), 5))  # 5 in total, not 5 per frame
    torch.testing.assert_close(weights.sum(dim=0), torch.ones(h * w))


def test_identical_frames_copy_the_labels() -> None:
    h, w = 4, 5
    feats = torch.eye(h * w).reshape(h, w, h * w)  # every patch distinct, orthogonal to the others
    first = first_labels(np.arange(h * w, dtype=np.uint8).reshape(h, w) % 3, (h, w))
    params = PropagationParams(topk=1, n_last_frames=2)
    outputs = list(propagate_video([feats, feats, feats, feats], first, params=params))
    assert len(outputs) == 3
    for soft in outputs:
        torch.testing.assert_close(soft, first)


def test_queue_holds_soft_labels_of_previous_frames() -> None:
    # First frame: patches e1 (class 0) and e2 (class 1). Frame 1: both patches e1; at T = 1 and
    # top-2 each gets weights e / (e + 1) on class 0 and 1 / (e + 1) on class 1. Frame 2: both
    # patches e3, orthogonal to everything, so its 4 sources (first frame + frame 1) weigh 1/4 each.
    e1, e2, e3 = torch.eye(3)
    first_feats = torch.stack([e1, e2])[None]  # (h=1, w=2, D=3)
    first = first_labels(np.array([[0, 1]], dtype=np.uint8), (1, 2))
    frame1, frame2 = torch.stack([e1, e1])[None], torch.stack([e3, e3])[None]
    p0 = np.e / (np.e + 1)
    soft1_expected = torch.tensor([p0, 1 - p0])[:, None, None].expand(2, 1, 2)
    params = PropagationParams(topk=4, temperature=1.0, n_last_frames=1, neighbourhood=0)
    soft1, soft2 = propagate_video([first_feats, frame1, frame2], first, params=params)
    torch.testing.assert_close(soft1, soft1_expected)
    # Soft labels in the queue: (onehot0 + onehot1 + 2 * soft1) / 4, not (.. + 2 * onehot0) / 4.
    expected = torch.tensor([(1 + 2 * p0) / 4, (1 + 2 * (1 - p0)) / 4])[:, None, None].expand(2, 1, 2)
    torch.testing.assert_close(soft2, expected)
    # Without the queue only the first frame votes: 1/2 each.
    _, alone = propagate_video([first_feats, frame1, frame2], first, params=PropagationParams(
        topk=2, temperature=1.0, n_last_frames=0, neighbourhood=0))
    torch.testing.assert_close(alone, torch.full((2, 1, 2), 0.5))


def test_normalise_channels_matches_official_norm_mask() -> None:
    x = torch.rand(4, 6, 7)
    x[2] = 0.0  # max 0: left as is
    expected = x.clone()
    for c in range(4):
        if expected[c].max() > 0:
            expected[c] = (expected[c] - expected[c].min()) / (expected[c] - expected[c].min()).max()
    torch.testing.assert_close(normalise_channels(x), expected)


def test_norm_mask_changes_the_argmax() -> None:
    # Raw argmax is 0 everywhere; rescaled, channel 0 is [1, 0.83, 0] and channel 1 [0.89, 1, 0].
    soft = torch.tensor([[[0.6, 0.5, 0.0]], [[0.4, 0.45, 0.0]]])
    assert soft.argmax(dim=0).tolist() == [[0, 0, 0]]
    assert labels_to_mask(soft, patch_size=1, out_size=(1, 3)).tolist() == [[0, 1, 0]]


@pytest.mark.parametrize(("hw", "expected"), [
    ((480, 854), (480, 832)), ((480, 910), (480, 896)), ((480, 1152), (480, 1152)), ((854, 480), (832, 480))])
def test_target_size_matches_official_rule(hw, expected) -> None:
    assert target_size(*hw) == expected


def test_target_size_for_small_frames() -> None:
    assert target_size(64, 96, short_side=None, multiple=4) == (64, 96)
    assert target_size(480, 854, short_side=96, multiple=8) == (96, 168)
    with pytest.raises(ConfigError):
        target_size(64, 96, short_side=None, multiple=128)


def test_first_labels_nearest_resize_and_one_hot() -> None:
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[:4, 4:] = 2
    labels = first_labels(mask, (2, 2))
    assert labels.shape == (3, 2, 2)
    assert labels[2].tolist() == [[0.0, 1.0], [0.0, 0.0]]
    assert labels[1].sum() == 0  # id 1 absent but its channel kept
    torch.testing.assert_close(labels.sum(dim=0), torch.ones(2, 2))
