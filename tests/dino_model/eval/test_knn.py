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
    """(classes ranked by vote, votes) per test row, one row at a time in float64."""
    train = torch.nn.functional.normalize(train, dim=1)
    test = torch.nn.functional.normalize(test, dim=1)
    preds, all_scores = [], []
    for x in test:
        sims = train @ x
        top = sims.topk(k)
        scores = torch.zeros(n_classes, dtype=torch.float64)
        for s, i in zip(top.values, top.indices, strict=True):
            scores[labels[i]] += math.exp(s.item() / t)
        preds.append(scores.argsort(descending=True))
        all_scores.append(scores)
    return torch.stack(preds), torch.stack(all_scores)


def reference_top5(ranked, scores, test_labels):
    """% of rows whose class is among the 5 best-voted and got a vote."""
    hits = [(ranked[i, :5] == y).any().item() and scores[i, y].item() > 0 for i, y in enumerate(test_labels.tolist())]
    return 100.0 * sum(hits) / len(hits)


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_matches_loop_reference_for_any_chunk_size(chunk):
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(60, 8, generator=g), torch.randn(25, 8, generator=g)
    labels, test_labels = torch.randint(0, 6, (60,), generator=g), torch.randint(0, 6, (25,), generator=g)
    ranked, scores = reference(train, labels, test, 10, 0.07, 6)
    expected_top1 = 100.0 * (ranked[:, 0] == test_labels).float().mean().item()
    expected_top5 = reference_top5(ranked, scores, test_labels)
    r = knn_classify(train, labels, test, test_labels, ks=[10], chunk_size=chunk, num_classes=6)
    assert r[10]["top1"] == pytest.approx(expected_top1) and r[10]["top5"] == pytest.approx(expected_top5)
    torch.testing.assert_close(knn_predict(train, labels, test, k=10, chunk_size=chunk, num_classes=6), ranked[:, 0])
    assert any(scores[i, y] == 0 for i, y in enumerate(test_labels.tolist()))  # the no-vote rule is exercised


def test_confusion_matrix():
    assert confusion_matrix(torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1]), 2) == [[1, 1], [0, 1]]


def test_top5_only_above_five_classes():
    g = torch.Generator().manual_seed(1)
    train, test = torch.randn(30, 4, generator=g), torch.randn(9, 4, generator=g)
    for n_classes, has_top5 in [(2, False), (5, False), (6, True), (10, True)]:
        labels, test_labels = torch.arange(30) % n_classes, torch.arange(9) % n_classes
        r = knn_classify(train, labels, test, test_labels, ks=[3, 10])
        assert all(("top5" in v) is has_top5 for v in r.values()), n_classes
        # an explicit class count decides too, even when the labels use fewer classes
        r = knn_classify(train, labels % 2, test, test_labels % 2, ks=[3], num_classes=n_classes)
        assert ("top5" in r[3]) is has_top5


def test_a_class_without_a_vote_is_no_top5_hit():
    # 7 classes; the 2 nearest neighbours are of classes 0 and 1, the true class 2 gets no vote. The
    # vote ranks classes 2..6 (all zero) in arbitrary order, so position alone could count it in the top 5.
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [-1.0, 0.0], [-1.0, 0.1], [0.0, -1.0], [-0.1, -1.0], [0.1, -1.0]])
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6])
    test = torch.tensor([[1.0, 0.05]])
    assert knn_classify(train, labels, test, torch.tensor([2]), ks=[2])[2] == {"top1": 0.0, "top5": 0.0}
    assert knn_classify(train, labels, test, torch.tensor([1]), ks=[2])[2] == {"top1": 0.0, "top5": 100.0}
    assert knn_classify(train, labels, test, torch.tensor([0]), ks=[2])[2] == {"top1": 100.0, "top5": 100.0}
    # k = 1: only the best-voted class counts (the official min(5, k))
    assert knn_classify(train, labels, test, torch.tensor([1]), ks=[1])[1] == {"top1": 0.0, "top5": 0.0}


def test_few_test_images_and_k_beyond_the_training_set():
    # The official classifier splits the test set into 100 chunks (fails below 100 images) and asks
    # topk(k) of the training set (fails for k > N_train); here k is capped at N_train.
    g = torch.Generator().manual_seed(2)
    train, test = torch.randn(12, 8, generator=g), torch.randn(3, 8, generator=g)
    labels, test_labels = torch.arange(12) % 7, torch.tensor([0, 3, 6])
    r = knn_classify(train, labels, test, test_labels, ks=[5, 12, 200])
    ranked, scores = reference(train, labels, test, 12, 0.07, 7)
    expected = {"top1": 100.0 * (ranked[:, 0] == test_labels).float().mean().item(),
                "top5": reference_top5(ranked, scores, test_labels)}
    assert r[200] == pytest.approx(expected) and r[12] == pytest.approx(expected)
    ranked5, scores5 = reference(train, labels, test, 5, 0.07, 7)
    assert r[5]["top1"] == pytest.approx(100.0 * (ranked5[:, 0] == test_labels).float().mean().item())
