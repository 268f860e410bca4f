"""The drift of recent captured images against a new model's own drift reference, scored at export.

The flywheel retrains on a data version that holds the images serving captured (`captured/<day>/`,
YYYY-MM-DD folders, beside `train/` and `val/`), and the retrained model is scored on how far recent
captures drift from what it was trained on. The number is the ratio mmd2 / threshold that the
`DinoEmbeddingDrift` alert compares with 1 (dino_model/monitoring/rules.yml), so a retrained model
whose ratio stays above 1 would keep the alert firing once served.

The embeddings come from the path that builds the reference itself (`write_drift_reference`): the
checkpoint's evaluation transform at the contract's sizes, then the teacher backbone, whose ONNX
export is parity-checked against it. Scoring with any other preprocessing would compare two scales.
The statistic is dino_model.monitoring.drift's, the one the serving drift step computes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from dino_model.config import TrainConfig
from dino_model.data.datasets import ImageFolderDataset, ImageFolders, Sample
from dino_model.data.transforms import eval_transform
from dino_model.eval.features import extract
from dino_model.export.contract import ModelContract
from dino_model.monitoring.drift import DriftReference, drift_ratio

logger = logging.getLogger(__name__)

DAY = re.compile(r"\d{4}-\d{2}-\d{2}")  # a capture day folder, captured/<day>/


def image_folders(folders: Sequence[str | Path], contract: ModelContract, train_cfg: TrainConfig) -> ImageFolders:
    """The folders' images as the drift reference reads them: the evaluation transform at the contract's sizes."""
    eval_cfg = replace(train_cfg.eval, image_size=contract.image_size, resize_size=contract.resize_size)
    return ImageFolders([ImageFolderDataset(r, transform=eval_transform(eval_cfg)) for r in folders])


def embed(backbone: torch.nn.Module, dataset: ImageFolders, indices: Sequence[int], *, batch_size: int,
          desc: str) -> np.ndarray:
    """(len(indices), D) teacher embeddings of `dataset[indices]`, in the order of `indices` sorted."""
    loader = DataLoader(Subset(dataset, sorted(indices)), batch_size=batch_size)
    features, _ = extract(backbone.eval(), loader, desc=desc)
    return features.numpy()


def capture_day(sample: Sample) -> str:
    """The capture day (YYYY-MM-DD) of an image under `captured/<day>/`; "" for any other image."""
    day = sample.path.parent.name
    return day if DAY.fullmatch(day) else ""


def recent_captures(samples: Sequence[Sample], limit: int, *, seed: int = 0) -> list[int]:
    """Indices of up to `limit` samples, the newest capture days first.

    Within a day (and among images in no day folder, taken after every day) the order is a fixed random
    one: a folder's own order would hold one class, or one hash prefix, of it.
    """
    order = np.random.default_rng(seed).permutation(len(samples)).tolist()
    order.sort(key=lambda i: capture_day(samples[i]), reverse=True)  # stable: days newest first
    return order[:limit]


def score_drift(backbone: torch.nn.Module, contract: ModelContract, train_cfg: TrainConfig,
                reference: DriftReference, folders: Sequence[str | Path], *, limit: int | None = None
                ) -> dict[str, float | int] | None:
    """The drift ratio (mmd2 / threshold, mmd2, threshold, images) of the newest `limit` images of `folders`.

    `limit` defaults to the reference's window W: the served monitor's statistic if these were the last W
    requests. None, with a warning, when the folders hold fewer images than one window.
    """
    present = [Path(f) for f in folders if Path(f).is_dir()]
    dataset = image_folders(present, contract, train_cfg) if present else None
    size = len(dataset) if dataset is not None else 0
    if dataset is None or size < reference.window:
        logger.warning("%s hold %d images, fewer than one drift window of %d: their drift is not scored",
                       ", ".join(map(str, folders)), size, reference.window)
        return None
    picked = recent_captures(dataset.samples, limit or reference.window)
    features = embed(backbone, dataset, picked, batch_size=train_cfg.eval.batch_size, desc="drift score")
    score = drift_ratio(features, reference)
    if score is not None:
        logger.info("drift of %d images from %s: mmd2 %.3g, %.3g x the threshold", score["images"],
                    ", ".join(map(str, present)), score["mmd2"], score["ratio"])
    return score
