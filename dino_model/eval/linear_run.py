"""The linear probe of a checkpoint end to end: load, extract features from the data folders, fit, report.

The probe itself (feature layout, frozen features, classifier, accuracy, fit loop) is in linear.py.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchvision import transforms as T

from dino_model.config import EvalConfig, ModelConfig
from dino_model.data.datasets import ImageFolderDataset
from dino_model.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform
from dino_model.errors import DataError
from dino_model.eval.linear import (
    LinearClassifier,
    effective_lr,
    extract_probe_features,
    feature_layout,
    fit_classifier,
    frozen_features,
)
from dino_model.eval.report import build_report, metrics_table, write_report
from dino_model.eval.settings import LinearProbeConfig, checkpoint_config
from dino_model.models.backbone import is_vit

logger = logging.getLogger(__name__)


def train_transform(cfg: EvalConfig) -> T.Compose:
    """RandomResizedCrop (torchvision defaults) + horizontal flip, as the official linear probe."""
    return T.Compose([T.RandomResizedCrop(cfg.image_size), T.RandomHorizontalFlip(),
                      T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


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
