"""Weighted k-NN classification on frozen features: the DINO evaluation protocol.

Caron et al., ICCV 2021, Sec. 4.1, after Wu et al. 2018: cosine similarity between L2-normalised
features; the k nearest training features vote for their class with weight exp(sim / T), T = 0.07.
Test features are processed in chunks, so the similarity matrix never exceeds chunk x N_train.
"""

from __future__ import annotations

from collections.abc import Sequence

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
    """{k: {"top1": %, "top5": %}} for each k (capped at the training-set size)."""
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    n_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    k_max = min(max(ks), len(train))
    correct = {k: torch.zeros(2, dtype=torch.long) for k in ks}
    for start in range(0, len(test), chunk_size):
        sims, idx = (test[start : start + chunk_size] @ train.T).topk(k_max, dim=1)
        neighbour_labels = train_labels[idx]
        target = test_labels[start : start + chunk_size]
        for k in ks:
            scores = _vote(sims[:, :k], neighbour_labels[:, :k], n_classes, temperature)
            ranked = scores.argsort(dim=1, descending=True)
            correct[k][0] += (ranked[:, 0] == target).sum()
            correct[k][1] += (ranked[:, : min(5, k, n_classes)] == target[:, None]).any(dim=1).sum()
    n = len(test)
    return {k: {"top1": 100.0 * c[0].item() / n, "top5": 100.0 * c[1].item() / n} for k, c in correct.items()}


def _vote(sims: Tensor, labels: Tensor, n_classes: int, temperature: float) -> Tensor:
    """Per test row, the summed weights exp(sim / T) of the neighbours of each class: (n, C)."""
    weights = (sims / temperature).exp()
    scores = torch.zeros(sims.shape[0], n_classes, dtype=weights.dtype)
    return scores.scatter_add_(1, labels, weights)
