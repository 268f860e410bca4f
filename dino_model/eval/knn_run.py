"""The k-NN evaluation of a checkpoint end to end: load, extract features, classify, report."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from dino_model.config import EvalConfig
from dino_model.data.sources import labelled_classes
from dino_model.errors import DataError
from dino_model.eval.features import extract_features, labels_by_name
from dino_model.eval.knn import knn_classify, knn_predict
from dino_model.eval.report import build_report, metrics_table, write_report
from dino_model.eval.settings import checkpoint_config
from dino_model.models.loading import load_backbone

logger = logging.getLogger(__name__)

REPORTED_K = 20  # the paper reports k = 20


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor, n_classes: int) -> list[list[int]]:
    """rows = true class, columns = predicted class."""
    flat = labels.long() * n_classes + predictions.long()
    return torch.bincount(flat, minlength=n_classes * n_classes).view(n_classes, n_classes).tolist()


def run_knn_eval(checkpoint: str | Path, cfg: EvalConfig | None = None, *, train_dir: str | Path, val_dir: str | Path,
                 output: str | Path | None = None, device: str = "cpu") -> dict[str, Any]:
    """Score the teacher backbone of `checkpoint`; writes and returns the metrics report.

    cfg: image sizes, batch size and k-NN settings; None: the checkpoint's saved `eval` config.
    """
    if not train_dir or not val_dir:
        raise DataError("k-NN needs labelled train and val folders (data.knn_train and data.knn_val)")
    cfg = cfg or checkpoint_config(checkpoint).eval
    backbone, _ = load_backbone(checkpoint)
    train_x, train_y = extract_features(backbone, train_dir, cfg, device=device)
    classes = labelled_classes(str(train_dir))
    val_x, val_y = extract_features(backbone, val_dir, cfg, device=device)
    if (train_y < 0).any() or (val_y < 0).any():
        raise DataError(f"k-NN needs class sub-folders in {train_dir} and {val_dir}")
    val_y = _as_train_labels(val_y, labelled_classes(str(val_dir)), classes, val_dir)
    results = knn_classify(train_x, train_y, val_x, val_y, ks=cfg.knn_k, temperature=cfg.knn_temperature,
                           chunk_size=cfg.knn_chunk_size)
    metrics = {f"knn_top1_k{k}": r["top1"] for k, r in results.items()}
    metrics |= {f"knn_top5_k{k}": r["top5"] for k, r in results.items() if "top5" in r}  # > 5 classes only
    k_main = REPORTED_K if REPORTED_K in results else min(results)
    metrics["knn_top1"] = results[k_main]["top1"]
    predictions = knn_predict(train_x, train_y, val_x, k=k_main, temperature=cfg.knn_temperature,
                              chunk_size=cfg.knn_chunk_size, num_classes=len(classes))
    details = {"classes": classes, "confusion_matrix": confusion_matrix(val_y, predictions, len(classes)),
               "k": k_main, "temperature": cfg.knn_temperature, "n_train": len(train_y), "n_val": len(val_y),
               "train_dir": str(train_dir), "val_dir": str(val_dir), "feature_dim": int(train_x.shape[1]),
               "image_size": cfg.image_size, "resize_size": cfg.resize_size}
    report = build_report("knn", checkpoint, metrics, details)
    out = Path(output) if output else Path(checkpoint).parent / "eval" / "knn.json"
    md = f"# k-NN evaluation\n\n{checkpoint}: top-1 {metrics['knn_top1']:.2f}% at k={k_main}\n\n"
    md += metrics_table(metrics)
    write_report(report, out, md)
    logger.info("k-NN top-1 %.2f%% (k=%d) on %d images", metrics["knn_top1"], k_main, len(val_y))
    return report | {"report_path": str(out)}


def _as_train_labels(val_y: torch.Tensor, val_classes: list[str], classes: list[str], val_dir: str | Path
                     ) -> torch.Tensor:
    """Validation labels numbered as the train folder numbers its classes (by name, not folder position).

    A validation folder without one of the train classes numbers the rest differently; matched by
    position, every label after the gap would name the wrong class.
    """
    unknown = sorted(set(val_classes) - set(classes))
    if unknown:
        raise DataError(f"{val_dir} has class folders the k-NN memory bank lacks: {', '.join(unknown[:5])}"
                        f"{' ...' if len(unknown) > 5 else ''}; use train and val folders of the same classes")
    return labels_by_name(val_y, val_classes, classes)
