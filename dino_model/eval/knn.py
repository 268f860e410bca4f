"""Weighted k-NN classification on frozen features: the DINO evaluation protocol.

Caron et al., ICCV 2021, Sec. 4.1, after Wu et al. 2018: cosine similarity between L2-normalised
features; the k nearest training features vote for their class with weight exp(sim / T), T = 0.07.
Test features are processed in chunks, so the similarity matrix never exceeds chunk x N_train.

Where this differs from the official `eval_knn.py`, it is on purpose. That script always ranks 1,000
classes, splits the test set into 100 chunks (it fails below 100 test images) and asks for k
neighbours (it fails when k exceeds the training set). Here the class count is the data set's, any
test-set size works and k is capped at the training-set size. Top-5 is reported only above 5
classes (the rule the linear probe shares, `dino_model.eval.top5`): with 5 or fewer the top 5
holds every class and measures no ranking. A class no neighbour
voted for is never a top-5 hit; the official ranking orders such zero-score classes arbitrarily
among its 1,000.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from dino_model.eval.top5 import TOP5_MIN_CLASSES, reports_top5

__all__ = ["TOP5_MIN_CLASSES", "knn_classify", "knn_predict"]


@torch.inference_mode()
def knn_classify(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    ks: Sequence[int] = (10, 20, 100, 200),
    temperature: float = 0.07,
    chunk_size: int = 1024,
    num_classes: int | None = None,
) -> dict[int, dict[str, float]]:
    """{k: {"top1": %, "top5": %}} for each k (neighbours capped at the training-set size).

    "top5" is left out with 5 or fewer classes (`top5.reports_top5` of num_classes, else of the
    largest label + 1). A top-5 hit: the true class is among the min(5, k) best-voted classes and at
    least one of the k neighbours has it.
    """
    n_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    correct = {k: torch.zeros(2, dtype=torch.long) for k in ks}
    for start, neighbours, ranked in _ranked_chunks(train_features, train_labels, test_features, ks=ks,
                                                    temperature=temperature, chunk_size=chunk_size,
                                                    n_classes=n_classes):
        target = test_labels[start : start + chunk_size]
        for k, classes in ranked.items():
            correct[k][0] += (classes[:, 0] == target).sum()
            voted = (neighbours[:, :k] == target[:, None]).any(dim=1)
            correct[k][1] += ((classes[:, : min(5, k)] == target[:, None]).any(dim=1) & voted).sum()
    n = len(test_features)
    return {k: _percentages(c, n, with_top5=reports_top5(n_classes)) for k, c in correct.items()}


def _percentages(correct: Tensor, n: int, *, with_top5: bool) -> dict[str, float]:
    """{"top1": %, "top5": %} from (top-1 hits, top-5 hits); top-5 only when with_top5."""
    result = {"top1": 100.0 * correct[0].item() / n}
    if with_top5:
        result["top5"] = 100.0 * correct[1].item() / n
    return result


@torch.inference_mode()
def knn_predict(train_features: Tensor, train_labels: Tensor, test_features: Tensor, *, k: int = 20,
                temperature: float = 0.07, chunk_size: int = 1024, num_classes: int | None = None) -> Tensor:
    """The predicted class of every test feature, (N_test,) int64."""
    n_classes = num_classes or int(train_labels.max()) + 1
    chunks = _ranked_chunks(train_features, train_labels, test_features, ks=[k], temperature=temperature,
                            chunk_size=chunk_size, n_classes=n_classes)
    return torch.cat([ranked[k][:, 0] for _, _, ranked in chunks])


def _ranked_chunks(train_features: Tensor, train_labels: Tensor, test_features: Tensor, *, ks: Sequence[int],
                   temperature: float, chunk_size: int, n_classes: int
                   ) -> Iterator[tuple[int, Tensor, dict[int, Tensor]]]:
    """Per chunk of the test set: (start, neighbour labels nearest first, {k: classes ranked by vote})."""
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    k_max = min(max(ks), len(train))
    for start in range(0, len(test), chunk_size):
        sims, idx = (test[start : start + chunk_size] @ train.T).topk(k_max, dim=1)
        neighbour_labels = train_labels[idx]
        votes = {k: weighted_vote(sims[:, :k], neighbour_labels[:, :k], n_classes, temperature) for k in ks}
        yield start, neighbour_labels, {k: v.argsort(dim=1, descending=True) for k, v in votes.items()}


def weighted_vote(sims: Tensor, labels: Tensor, n_classes: int, temperature: float) -> Tensor:
    """Per test row, the summed weights exp(sim / T) of the neighbours of each class: (n, C)."""
    weights = (sims / temperature).exp()
    scores = torch.zeros(sims.shape[0], n_classes, dtype=weights.dtype)
    return scores.scatter_add_(1, labels, weights)
