"""Linear probe: one linear layer trained on frozen backbone features (DINO's `eval_linear.py`).

Caron et al., ICCV 2021, Sec. 4.1 and App.: the features are the CLS tokens of the last n blocks
(each through the final norm), concatenated, optionally with the average-pooled patch tokens of the
last block (ViT-S: n = 4 without pooling; ViT-B: n = 1 with pooling). The classifier is a plain
`nn.Linear` (weights N(0, 0.01), bias 0, no BatchNorm) trained with SGD (momentum 0.9, no weight
decay, lr 0.001 per 256 images, cosine-annealed per epoch) on random-resized crops and flips,
validated on centre crops, and the best validation epoch is reported. With `augment=False` the
training features are computed once (centre crops) and cached, which makes the probe cheap on CPU.

Feature order, which a saved classifier depends on: without pooling, [CLS of block -n, ..., CLS of
the last block]. With pooling and n = 1 (the official ViT-B setting) the official order, CLS and
pooled values interleaved [cls_0, avg_0, cls_1, avg_1, ...] (the official code stacks them on a new
last axis and flattens), so the released linear weights apply unchanged. The official code fails
for pooling with n > 1; here that layout is the concatenation [CLS of block -n, ..., CLS of the
last block, pooled patches] (no interleaving is defined for n CLS vectors and one pooled vector).

A trained classifier file is read in either format: the official one (`state_dict` holding
`module.linear.weight` and `module.linear.bias`, as `eval_linear.py` saves it and the released
`*_linearweights.pth` files hold it) or this project's `linear.pth` (`state_dict` holding `weight` and
`bias`, plus the feature layout and class names it was trained on).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from dino_model.errors import CheckpointError, ConfigError
from dino_model.eval.features import extract
from dino_model.eval.settings import LinearProbeConfig
from dino_model.eval.top5 import reports_top5
from dino_model.logs import progress
from dino_model.models.backbone import intermediate_tokens
from dino_model.runtime.checkpoint import load_checkpoint

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
    """(B, D * (n + avgpool)) probe features of a ViT, in the order of `feature_order`, or the pooled
    (B, D) features of a ResNet."""
    if not hasattr(backbone, "blocks"):
        return backbone(images).float()
    tokens = intermediate_tokens(backbone, images, n_last_blocks)
    parts = [t[:, 0] for t in tokens]
    if avgpool:
        pooled = tokens[-1][:, backbone.num_prefix_tokens :].mean(dim=1)
        if n_last_blocks == 1:  # the official interleaving
            return torch.stack([parts[0], pooled], dim=-1).flatten(1).float()
        parts.append(pooled)
    return torch.cat(parts, dim=1).float()


def feature_order(n_last_blocks: int, avgpool: bool) -> str:
    """How `frozen_features` lays out its vector: "interleaved" (n = 1 with pooling) or "concatenated"."""
    return "interleaved" if avgpool and n_last_blocks == 1 else "concatenated"


def interleave_columns(weight: Tensor) -> Tensor:
    """A (C, 2D) classifier weight for [CLS, pooled] concatenated, re-ordered for the interleaved features."""
    classes, dim = weight.shape
    return weight.reshape(classes, 2, dim // 2).transpose(1, 2).reshape(classes, dim)


class LinearClassifier(nn.Linear):
    """nn.Linear initialised as the official LinearClassifier: N(0, 0.01) weights, zero bias."""

    def __init__(self, in_features: int, num_labels: int, *, generator: torch.Generator | None = None) -> None:
        super().__init__(in_features, num_labels)
        with torch.no_grad():
            self.weight.normal_(0.0, 0.01, generator=generator)
            self.bias.zero_()


@dataclass
class LinearHead:
    """A trained classifier read from a file: logits = features @ weight.T + bias."""

    weight: Tensor  # (classes, features), columns in `frozen_features` order
    bias: Tensor  # (classes,)
    format: str  # "official" (module.linear.*) or "project" (this project's linear.pth)
    n_last_blocks: Optional[int] = None  # the layout it was trained on, when the file records it
    avgpool: Optional[bool] = None
    classes: Optional[list[str]] = None

    def __call__(self, features: Tensor) -> Tensor:
        return F.linear(features, self.weight.to(features), self.bias.to(features))


def read_linear_head(path: str | Path) -> LinearHead:
    """A classifier file, official or ours; CheckpointError naming what it holds when it is neither."""
    path = Path(path)
    ckpt = load_checkpoint(path)
    state = ckpt.get("state_dict", ckpt)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: `state_dict` is not a dict of tensors")
    official = any(k.startswith(("module.linear.", "linear.")) for k in state)
    weights = {k.removeprefix("module.").removeprefix("linear."): v for k, v in state.items()}
    if set(weights) != {"weight", "bias"}:
        raise CheckpointError(f"{path} is not a linear classifier file: expected `state_dict` with "
                              f"module.linear.weight and module.linear.bias (official) or weight and bias "
                              f"(linear.pth); found {sorted(state)[:6]}")
    weight, bias = weights["weight"], weights["bias"]
    if weight.ndim != 2 or bias.shape != (weight.shape[0],):
        raise CheckpointError(f"{path}: classifier weight {tuple(weight.shape)} and bias {tuple(bias.shape)} do not "
                              f"form a linear layer (weight (classes, features), bias (classes,))")
    head = LinearHead(weight.float(), bias.float(), "official" if official else "project",
                      n_last_blocks=ckpt.get("n_last_blocks"), avgpool=ckpt.get("avgpool"),
                      classes=list(ckpt["classes"]) if ckpt.get("classes") else None)
    if head.avgpool and head.n_last_blocks == 1 and ckpt.get("feature_order") != "interleaved":
        # written before the probe used the official order: [CLS, pooled] concatenated
        logger.info("%s: classifier trained on [CLS, pooled] concatenated; columns re-ordered to the interleaved "
                    "features", path)
        head.weight = interleave_columns(head.weight)
    return head


def extract_probe_features(backbone: nn.Module, loader: DataLoader, *, n_last_blocks: int, avgpool: bool,
                           device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """(probe features (N, dim) on CPU, labels (N,)), one batch of images in memory at a time."""
    embed = partial(frozen_features, backbone, n_last_blocks=n_last_blocks, avgpool=avgpool)
    return extract(embed, loader, device=device, desc="probe features")


def accuracy(logits: Tensor, labels: Tensor) -> tuple[float, float | None]:
    """(top-1 %, top-5 %); top-5 is None with 5 or fewer classes (`top5.reports_top5`)."""
    ranked = logits.topk(min(5, logits.shape[1]), dim=1).indices
    top1 = 100.0 * (ranked[:, 0] == labels).float().mean().item()
    if not reports_top5(logits.shape[1]):
        return top1, None
    return top1, 100.0 * (ranked == labels[:, None]).any(dim=1).float().mean().item()


def with_top5(record: dict[str, Any], top5: float | None) -> dict[str, Any]:
    """`record` with a "top5" entry, unless top-5 is not reported (None)."""
    return record if top5 is None else record | {"top5": top5}


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
            history.append(with_top5({"epoch": epoch, "loss": loss, "top1": top1}, top5))
            if top1 > best["top1"]:
                best = with_top5({"top1": top1, "epoch": epoch, "state_dict": {
                    k: v.detach().cpu().clone() for k, v in classifier.state_dict().items()}}, top5)
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
