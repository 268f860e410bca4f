"""Weighted k-NN classification on frozen features: the DINO evaluation protocol.

Caron et al., ICCV 2021, Sec. 4.1, after Wu et al. 2018: cosine similarity between L2-normalised
features; the k nearest training features vote for their class with weight exp(sim / T), T = 0.07.
Test features are processed in chunks, so the similarity matrix never exceeds chunk x N_train.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


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
    """{k: {"top1": %, "top5": %}} for each k (neighbours capped at the training-set size)."""
    n_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    correct = {k: torch.zeros(2, dtype=torch.long) for k in ks}
    for start, ranked in _ranked_chunks(train_features, train_labels, test_features, ks=ks,
                                        temperature=temperature, chunk_size=chunk_size, n_classes=n_classes):
        target = test_labels[start : start + chunk_size]
        for k, classes in ranked.items():
            correct[k][0] += (classes[:, 0] == target).sum()
            correct[k][1] += (classes[:, : min(5, k, n_classes)] == target[:, None]).any(dim=1).sum()
    n = len(test_features)
    return {k: {"top1": 100.0 * c[0].item() / n, "top5": 100.0 * c[1].item() / n} for k, c in correct.items()}


@torch.inference_mode()
def knn_predict(train_features: Tensor, train_labels: Tensor, test_features: Tensor, *, k: int = 20,
                temperature: float = 0.07, chunk_size: int = 1024, num_classes: int | None = None) -> Tensor:
    """The predicted class of every test feature, (N_test,) int64."""
    n_classes = num_classes or int(train_labels.max()) + 1
    chunks = _ranked_chunks(train_features, train_labels, test_features, ks=[k], temperature=temperature,
                            chunk_size=chunk_size, n_classes=n_classes)
    return torch.cat([ranked[k][:, 0] for _, ranked in chunks])


def _ranked_chunks(train_features: Tensor, train_labels: Tensor, test_features: Tensor, *, ks: Sequence[int],
                   temperature: float, chunk_size: int, n_classes: int) -> Iterator[tuple[int, dict[int, Tensor]]]:
    """(chunk start, {k: classes ranked by vote, (chunk, C)}) over chunks of the test set."""
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    k_max = min(max(ks), len(train))
    for start in range(0, len(test), chunk_size):
        sims, idx = (test[start : start + chunk_size] @ train.T).topk(k_max, dim=1)
        neighbour_labels = train_labels[idx]
        votes = {k: weighted_vote(sims[:, :k], neighbour_labels[:, :k], n_classes, temperature) for k in ks}
        yield start, {k: v.argsort(dim=1, descending=True) for k, v in votes.items()}


def weighted_vote(sims: Tensor, labels: Tensor, n_classes: int, temperature: float) -> Tensor:
    """Per test row, the summed weights exp(sim / T) of the neighbours of each class: (n, C)."""
    weights = (sims / temperature).exp()
    scores = torch.zeros(sims.shape[0], n_classes, dtype=weights.dtype)
    return scores.scatter_add_(1, labels, weights)
