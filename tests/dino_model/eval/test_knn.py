"""Weighted k-NN against a hand-computed vote and a per-sample loop reference."""

import math

import pytest
import torch

from dino_model.eval.knn import knn_classify, knn_predict
from dino_model.eval.knn_run import confusion_matrix


def test_hand_computed_weighted_vote():
    # Test point at angle 0; neighbours at cos 1.0 (class 0), cos 0.8 and 0.6 (class 1).
    train = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 2])
    test = torch.tensor([[2.0, 0.0]])  # normalised inside
    # k = 3, T = 0.07: class 0 gets e^(1/0.07), class 1 gets e^(0.8/0.07) + e^(0.6/0.07) -> class 0 wins.
    assert math.exp(1 / 0.07) > math.exp(0.8 / 0.07) + math.exp(0.6 / 0.07)
    r = knn_classify(train, labels, test, torch.tensor([0]), ks=[3], temperature=0.07)
    assert r[3]["top1"] == 100.0
    # With T = 1, class 1 wins: e^0.8 + e^0.6 = 4.05 > e^1 = 2.72.
    r = knn_classify(train, labels, test, torch.tensor([1]), ks=[3], temperature=1.0)
    assert r[3]["top1"] == 100.0


def reference(train, labels, test, k, t, n_classes):
    train = torch.nn.functional.normalize(train, dim=1)
    test = torch.nn.functional.normalize(test, dim=1)
    preds = []
    for x in test:
        sims = train @ x
        top = sims.topk(k)
        scores = torch.zeros(n_classes, dtype=torch.float64)
        for s, i in zip(top.values, top.indices, strict=True):
            scores[labels[i]] += math.exp(s.item() / t)
        preds.append(scores.argsort(descending=True))
    return torch.stack(preds)


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_matches_loop_reference_for_any_chunk_size(chunk):
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(60, 8, generator=g), torch.randn(25, 8, generator=g)
    labels, test_labels = torch.randint(0, 6, (60,), generator=g), torch.randint(0, 6, (25,), generator=g)
    ranked = reference(train, labels, test, 10, 0.07, 6)
    expected_top1 = 100.0 * (ranked[:, 0] == test_labels).float().mean().item()
    expected_top5 = 100.0 * (ranked[:, :5] == test_labels[:, None]).any(1).float().mean().item()
    r = knn_classify(train, labels, test, test_labels, ks=[10], chunk_size=chunk, num_classes=6)
    assert r[10]["top1"] == pytest.approx(expected_top1) and r[10]["top5"] == pytest.approx(expected_top5)
    torch.testing.assert_close(knn_predict(train, labels, test, k=10, chunk_size=chunk, num_classes=6), ranked[:, 0])


def test_confusion_matrix():
    assert confusion_matrix(torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1]), 2) == [[1, 1], [0, 1]]
