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
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchvision import transforms as T

from dino_model.config import EvalConfig, ModelConfig
from dino_model.data.datasets import ImageFolderDataset
from dino_model.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform
from dino_model.errors import ConfigError, DataError
from dino_model.eval.features import extract
from dino_model.eval.report import build_report, metrics_table, write_report
from dino_model.eval.settings import LinearProbeConfig, checkpoint_config
from dino_model.models.backbone import intermediate_tokens, is_vit

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


def train_transform(cfg: EvalConfig) -> T.Compose:
    """RandomResizedCrop (torchvision defaults) + horizontal flip, as the official linear probe."""
    return T.Compose([T.RandomResizedCrop(cfg.image_size), T.RandomHorizontalFlip(),
                      T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


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


def probe_backbone(backbone: nn.Module, model_cfg: ModelConfig, cfg: EvalConfig, *, train_dir: str | Path,
                   val_dir: str | Path, probe: LinearProbeConfig, device: str = "cpu") -> dict[str, Any]:
    """Train the linear probe on a frozen backbone; returns metrics, history and the best weights."""
    backbone = backbone.eval().to(device)
    n_blocks, avgpool = (1, False)
    if is_vit(model_cfg):
        n_blocks, avgpool = feature_layout(probe, width=backbone.num_features, depth=len(backbone.blocks))
    train_set = ImageFolderDataset(train_dir, transform=train_transform(cfg) if probe.augment else eval_transform(cfg))
    val_set = ImageFolderDataset(val_dir, transform=eval_transform(cfg))
    if not train_set.classes or train_set.classes != val_set.classes:
        raise DataError(f"the linear probe needs the same class folders in {train_dir} ({train_set.classes}) "
                        f"and {val_dir} ({val_set.classes})")
    layout = {"n_last_blocks": n_blocks, "avgpool": avgpool, "device": device}
    val_x, val_y = extract_probe_features(backbone, DataLoader(val_set, batch_size=cfg.batch_size), **layout)
    gen = torch.Generator().manual_seed(probe.seed)
    if probe.augment:
        loader = DataLoader(train_set, batch_size=probe.batch_size, shuffle=True, generator=gen)
        epoch_batches = partial(_live_batches, backbone, loader, layout)
    else:
        cached = extract_probe_features(backbone, DataLoader(train_set, batch_size=cfg.batch_size), **layout)
        epoch_batches = partial(_cached_batches, *cached, probe.batch_size, gen)
    classifier = LinearClassifier(val_x.shape[1], len(train_set.classes), generator=gen).to(device)
    best, history = fit_classifier(classifier, epoch_batches, (val_x, val_y), probe=probe, device=device)
    logger.info("linear probe: best top-1 %.2f%% at epoch %d (%s features of dim %d)", best["top1"], best["epoch"],
                f"{n_blocks} CLS" + (" + avgpool" if avgpool else ""), val_x.shape[1])
    return {"best": best, "history": history, "feature_dim": int(val_x.shape[1]), "n_last_blocks": n_blocks,
            "avgpool": avgpool, "lr": effective_lr(probe), "n_train": len(train_set), "n_val": len(val_set),
            "classes": train_set.classes}


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
    for epoch in range(probe.epochs):
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


def _cached_batches(x: Tensor, y: Tensor, batch_size: int, gen: torch.Generator):
    order = torch.randperm(len(y), generator=gen)
    for start in range(0, len(y), batch_size):
        idx = order[start : start + batch_size]
        yield x[idx], y[idx]


def _live_batches(backbone: nn.Module, loader: DataLoader, layout: dict[str, Any]):
    for images, y in loader:
        with torch.inference_mode():
            feats = frozen_features(backbone, images.to(layout["device"]), n_last_blocks=layout["n_last_blocks"],
                                    avgpool=layout["avgpool"])
        yield feats.clone(), y


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


def run_linear_eval(checkpoint: str | Path, cfg: EvalConfig | None = None, *, train_dir: str | Path,
                    val_dir: str | Path, probe: LinearProbeConfig | None = None, output: str | Path | None = None,
                    device: str = "cpu", random_init: bool = False) -> dict[str, Any]:
    """Linear-probe the teacher backbone of `checkpoint` (or, as a baseline, a random init of its
    architecture); writes the metrics JSON, a Markdown report and the best classifier weights.

    cfg: the image sizes and batch size of feature extraction; None: the checkpoint's saved `eval` config.
    """
    from dino_model.models.backbone import build_backbone
    from dino_model.models.loading import load_backbone

    if not train_dir or not val_dir:
        raise DataError("the linear probe needs labelled train and val folders (--train-dir, --val-dir)")
    probe = probe or LinearProbeConfig()
    cfg = cfg or checkpoint_config(checkpoint).eval
    backbone, model_cfg = load_backbone(checkpoint)
    if random_init:
        backbone, _ = build_backbone(model_cfg, drop_path_rate=0.0)
    start = time.perf_counter()
    result = probe_backbone(backbone, model_cfg, cfg, train_dir=train_dir, val_dir=val_dir, probe=probe, device=device)
    best = result["best"]
    out = Path(output) if output else Path(checkpoint).parent / "eval" / "linear.json"
    weights = out.with_suffix(".pth")
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": best["state_dict"], "epoch": best["epoch"], "top1": best["top1"],
                "classes": result["classes"], "n_last_blocks": result["n_last_blocks"],
                "avgpool": result["avgpool"]}, weights)
    metrics = {"linear_top1": best["top1"], "linear_top5": best["top5"], "linear_best_epoch": best["epoch"],
               "linear_last_top1": result["history"][-1]["top1"]}
    details = {key: result[key] for key in ("feature_dim", "n_last_blocks", "avgpool", "lr", "n_train", "n_val")}
    details |= {"train_dir": str(train_dir), "val_dir": str(val_dir), "image_size": cfg.image_size,
                "resize_size": cfg.resize_size, "random_init": random_init,
                "probe": asdict(probe), "history": result["history"], "classifier": str(weights),
                "seconds": time.perf_counter() - start}
    source = f"random-init:{checkpoint}" if random_init else checkpoint
    report = build_report("linear", source, metrics, details)
    md = (f"# Linear probe\n\n{source}: best top-1 {best['top1']:.2f}% (top-5 {best['top5']:.2f}%) at epoch "
          f"{best['epoch']} of {probe.epochs}\n\n" + metrics_table(metrics))
    write_report(report, out, md)
    return report | {"report_path": str(out)}
