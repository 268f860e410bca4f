"""Linear probe: one linear layer trained on frozen backbone features (DINO's `eval_linear.py`).

Caron et al., ICCV 2021, Sec. 4.1 and App.: the features are the CLS tokens of the last n blocks
(each through the final norm), concatenated, optionally with the average-pooled patch tokens of the
last block (ViT-S: n = 4 without pooling; ViT-B: n = 1 with pooling). The classifier is a plain
`nn.Linear` (weights N(0, 0.01), bias 0, no BatchNorm) trained with SGD (momentum 0.9, no weight
decay, lr 0.001 per 256 images, cosine-annealed per epoch) on random-resized crops and flips,
validated on centre crops, and the best validation epoch is reported. With `augment=False` the
training features are computed once (centre crops) and cached, which makes the probe cheap on CPU.
The official code interleaves CLS and pooled features when pooling (and fails for n > 1); here
they are concatenated in order [CLS of block -n, ..., CLS of the last block, pooled patches].
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from dino_model.errors import ConfigError
from dino_model.eval.features import extract
from dino_model.eval.settings import LinearProbeConfig
from dino_model.logs import progress
from dino_model.models.backbone import intermediate_tokens

logger = logging.getLogger(__name__)

BASE_WIDTH = 768  # ViT-B: one block with pooled patch tokens; narrower ViTs: four blocks, CLS only


def feature_layout(probe: LinearProbeConfig, *, width: int, depth: int) -> tuple[int, bool]:
    """(n_last_blocks, avgpool) for a ViT of this width and depth, after the width-dependent defaults."""
    base = width >= BASE_WIDTH
    n = probe.n_last_blocks if probe.n_last_blocks is not None else (1 if base else 4)
    avgpool = probe.avgpool_patchtokens if probe.avgpool_patchtokens is not None else base
    if n < 1:
        raise ConfigError(f"n_last_blocks={n} must be at least 1")
    if n > depth:
        logger.info("n_last_blocks=%d exceeds the backbone depth %d; using %d", n, depth, depth)
    return min(n, depth), avgpool


def frozen_features(backbone: nn.Module, images: Tensor, *, n_last_blocks: int, avgpool: bool) -> Tensor:
    """(B, D * (n + avgpool)) probe features of a ViT, or the pooled (B, D) features of a ResNet."""
    if not hasattr(backbone, "blocks"):
        return backbone(images).float()
    tokens = intermediate_tokens(backbone, images, n_last_blocks)
    parts = [t[:, 0] for t in tokens]
    if avgpool:
        parts.append(tokens[-1][:, backbone.num_prefix_tokens :].mean(dim=1))
    return torch.cat(parts, dim=1).float()


class LinearClassifier(nn.Linear):
    """nn.Linear initialised as the official LinearClassifier: N(0, 0.01) weights, zero bias."""

    def __init__(self, in_features: int, num_labels: int, *, generator: torch.Generator | None = None) -> None:
        super().__init__(in_features, num_labels)
        with torch.no_grad():
            self.weight.normal_(0.0, 0.01, generator=generator)
            self.bias.zero_()


def extract_probe_features(backbone: nn.Module, loader: DataLoader, *, n_last_blocks: int, avgpool: bool,
                           device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """(probe features (N, dim) on CPU, labels (N,)), one batch of images in memory at a time."""
    embed = partial(frozen_features, backbone, n_last_blocks=n_last_blocks, avgpool=avgpool)
    return extract(embed, loader, device=device, desc="probe features")


def accuracy(logits: Tensor, labels: Tensor) -> tuple[float, float]:
    """(top-1 %, top-5 %); top-5 counts min(5, classes) guesses."""
    ranked = logits.topk(min(5, logits.shape[1]), dim=1).indices
    top1 = (ranked[:, 0] == labels).float().mean().item()
    top5 = (ranked == labels[:, None]).any(dim=1).float().mean().item()
    return 100.0 * top1, 100.0 * top5


def effective_lr(probe: LinearProbeConfig) -> float:
    """The official scaling: lr per 256 images times batch_size / 256."""
    return probe.lr * probe.batch_size / 256


def fit_classifier(classifier: nn.Module, epoch_batches: Callable[[], Iterable[tuple[Tensor, Tensor]]],
                   val: tuple[Tensor, Tensor], *, probe: LinearProbeConfig,
                   device: str = "cpu") -> tuple[dict[str, Any], list[dict[str, float]]]:
    """SGD with a per-epoch cosine schedule; (best epoch with its weights, validation history)."""
    opt = torch.optim.SGD(classifier.parameters(), lr=effective_lr(probe), momentum=probe.momentum,
                          weight_decay=probe.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=probe.epochs, eta_min=0)
    best: dict[str, Any] = {"top1": -1.0}
    history = []
    for epoch in progress(range(probe.epochs), desc="linear probe", total=probe.epochs):
        loss = _train_epoch(classifier, opt, epoch_batches(), device)
        sched.step()
        if (epoch + 1) % probe.val_freq == 0 or epoch + 1 == probe.epochs:
            with torch.no_grad():
                top1, top5 = accuracy(classifier(val[0].to(device)).cpu(), val[1])
            history.append({"epoch": epoch, "loss": loss, "top1": top1, "top5": top5})
            if top1 > best["top1"]:
                best = {"top1": top1, "top5": top5, "epoch": epoch,
                        "state_dict": {k: v.detach().cpu().clone() for k, v in classifier.state_dict().items()}}
    return best, history


def _train_epoch(classifier: nn.Module, opt: torch.optim.Optimizer, batches, device: str) -> float:
    classifier.train()
    total, count = 0.0, 0
    for feats, y in batches:
        loss = F.cross_entropy(classifier(feats.to(device)), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total, count = total + loss.item() * len(y), count + len(y)
    classifier.eval()
    return total / max(count, 1)
