"""The linear probe of a checkpoint end to end: load, extract features from the data folders, fit, report.

The probe itself (feature layout, frozen features, classifier, accuracy, fit loop) is in linear.py.
`run_linear_head_eval` scores an already trained classifier (official released weights, or a
`linear.pth` of an earlier probe) on the validation folder without training, as the official
`eval_linear.py --evaluate` does.
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
from dino_model.errors import CheckpointError, ConfigError, DataError
from dino_model.eval.linear import (
    LinearClassifier,
    LinearHead,
    accuracy,
    effective_lr,
    extract_probe_features,
    feature_layout,
    feature_order,
    fit_classifier,
    frozen_features,
    read_linear_head,
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
                "avgpool": result["avgpool"],
                "feature_order": feature_order(result["n_last_blocks"], result["avgpool"])}, weights)
    metrics = {"linear_top1": best["top1"], **_top5_metric(best.get("top5")), "linear_best_epoch": best["epoch"],
               "linear_last_top1": result["history"][-1]["top1"]}
    details = {key: result[key] for key in ("feature_dim", "n_last_blocks", "avgpool", "lr", "n_train", "n_val")}
    details |= {"train_dir": str(train_dir), "val_dir": str(val_dir), "image_size": cfg.image_size,
                "resize_size": cfg.resize_size, "random_init": random_init,
                "probe": asdict(probe), "history": result["history"], "classifier": str(weights),
                "seconds": time.perf_counter() - start}
    source = f"random-init:{checkpoint}" if random_init else checkpoint
    report = build_report("linear", source, metrics, details)
    md = (f"# Linear probe\n\n{source}: best top-1 {best['top1']:.2f}%{_top5_text(best.get('top5'))} at epoch "
          f"{best['epoch']} of {probe.epochs}\n\n" + metrics_table(metrics))
    write_report(report, out, md)
    return report | {"report_path": str(out)}


def run_linear_head_eval(checkpoint: str | Path, head_path: str | Path, cfg: EvalConfig | None = None, *,
                         val_dir: str | Path, probe: LinearProbeConfig | None = None,
                         output: str | Path | None = None, device: str = "cpu") -> dict[str, Any]:
    """Score the teacher backbone of `checkpoint` with the classifier in `head_path`, without training.

    The feature layout is the one the head file records (this project's), else the probe's settings
    with their width-dependent defaults (the released weights: 4 CLS for ViT-S, 1 CLS + pooled for
    ViT-B). Writes the metrics JSON (`linear_top1`, `linear_top5` above 5 classes) and a Markdown report.
    """
    from dino_model.models.loading import load_backbone

    if not val_dir:
        raise DataError("scoring a classifier needs a labelled val folder (--val-dir)")
    probe = probe or LinearProbeConfig()
    cfg = cfg or checkpoint_config(checkpoint).eval
    start = time.perf_counter()
    head = read_linear_head(head_path)
    backbone, model_cfg = load_backbone(checkpoint)
    backbone = backbone.eval().to(device)
    n_blocks, avgpool = _head_layout(head, backbone, model_cfg, probe, head_path)
    dim = backbone.num_features * ((n_blocks + int(avgpool)) if is_vit(model_cfg) else 1)
    if head.weight.shape[1] != dim:
        layout = f"{n_blocks} CLS{' + avgpool' if avgpool else ''} of width {backbone.num_features}"
        raise CheckpointError(f"classifier {head_path} takes {head.weight.shape[1]} features; {checkpoint} gives {dim} "
                              f"({layout}): choose the layout it was trained on (--n-last-blocks, --avgpool) or "
                              f"the backbone it belongs to")
    val_set = ImageFolderDataset(val_dir, transform=eval_transform(cfg))
    _check_classes(head, val_set.classes, head_path, val_dir)
    feats, labels = extract_probe_features(backbone, DataLoader(val_set, batch_size=cfg.batch_size),
                                           n_last_blocks=n_blocks, avgpool=avgpool, device=device)
    with torch.no_grad():
        top1, top5 = accuracy(head(feats), labels)
    metrics = {"linear_top1": top1, **_top5_metric(top5)}
    details = {"head": str(head_path), "head_format": head.format, "trained": False, "feature_dim": dim,
               "n_last_blocks": n_blocks, "avgpool": avgpool, "n_val": len(val_set), "val_dir": str(val_dir),
               "classes": val_set.classes, "image_size": cfg.image_size, "resize_size": cfg.resize_size,
               "seconds": time.perf_counter() - start}
    report = build_report("linear", checkpoint, metrics, details)
    out = Path(output) if output else Path(checkpoint).parent / "eval" / "linear_head.json"
    md = (f"# Linear classifier\n\n{checkpoint} with {head_path} ({head.format} format): top-1 {top1:.2f}%"
          f"{_top5_text(top5)} on {len(val_set)} images\n\n" + metrics_table(metrics))
    write_report(report, out, md)
    logger.info("classifier %s on %s: top-1 %.2f%%%s", head_path, val_dir, top1, _top5_text(top5))
    return report | {"report_path": str(out)}


def _head_layout(head: LinearHead, backbone: nn.Module, model_cfg: ModelConfig, probe: LinearProbeConfig,
                 head_path: str | Path) -> tuple[int, bool]:
    """(n_last_blocks, avgpool): the head file's when it records them, else the probe's; refuses a conflict."""
    if not is_vit(model_cfg):
        return 1, False
    if head.n_last_blocks is None or head.avgpool is None:
        return feature_layout(probe, width=backbone.num_features, depth=len(backbone.blocks))
    asked = {"n_last_blocks": probe.n_last_blocks, "avgpool": probe.avgpool_patchtokens}
    recorded = {"n_last_blocks": head.n_last_blocks, "avgpool": head.avgpool}
    conflicts = [f"{k}={asked[k]} (the head was trained with {recorded[k]})"
                 for k in asked if asked[k] is not None and asked[k] != recorded[k]]
    if conflicts:
        raise ConfigError(f"classifier {head_path} records its feature layout; drop or change {', '.join(conflicts)}")
    return int(head.n_last_blocks), bool(head.avgpool)


def _check_classes(head: LinearHead, classes: list[str], head_path: str | Path, val_dir: str | Path) -> None:
    if head.weight.shape[0] != len(classes):
        raise CheckpointError(f"classifier {head_path} has {head.weight.shape[0]} classes; {val_dir} has "
                              f"{len(classes)} class folders")
    if head.classes is not None and head.classes != classes:
        raise DataError(f"classifier {head_path} was trained on classes {head.classes[:10]}; {val_dir} has "
                        f"{classes[:10]} (same folder names, in the same order, are needed)")


def _top5_metric(top5: float | None) -> dict[str, float]:
    """{"linear_top5": %}, or nothing where top-5 is not reported (5 or fewer classes)."""
    return {} if top5 is None else {"linear_top5": top5}


def _top5_text(top5: float | None) -> str:
    return "" if top5 is None else f" (top-5 {top5:.2f}%)"
