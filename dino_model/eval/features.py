"""Frozen-backbone feature extraction in fixed-size batches, so memory grows with D, not with images.

One extractor for every protocol on an image folder: k-NN and export take the teacher backbone's CLS
outputs, the linear probe its concatenated last-block tokens (`linear.frozen_features`). Extraction runs
under `torch.inference_mode`, in eval mode, into one (N, D) tensor allocated once: a list of small
per-batch tensors between the large freed activations fragments glibc's heap, and the resident memory
then grows with N (seen: +4 MB per batch of 256 for the tiny model) although nothing leaks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from dino_model.config import EvalConfig
from dino_model.data.sources import labelled_images
from dino_model.data.transforms import eval_transform
from dino_model.errors import DataError
from dino_model.logs import progress

logger = logging.getLogger(__name__)


@torch.inference_mode()
def extract(embed: Callable[[Tensor], Tensor], loader: DataLoader, *, device: torch.device | str = "cpu",
            desc: str = "features") -> tuple[Tensor, Tensor]:
    """(features (N, D) float32 on CPU, labels (N,) int64) of `embed` over every batch of `loader`."""
    labels = torch.empty(len(loader.dataset), dtype=torch.long)
    feats: Tensor | None = None
    start = 0
    for images, y in progress(loader, desc=desc, total=len(loader)):
        batch = embed(images.to(device)).float().cpu()
        if feats is None:
            feats = torch.empty(len(labels), batch.shape[1], dtype=batch.dtype)
        feats[start : start + len(y)] = batch
        labels[start : start + len(y)] = y
        start += len(y)
    if feats is None:
        raise DataError("no image to extract features from")
    return feats[:start], labels[:start]


def extract_features(
    backbone: nn.Module,
    root: str | Path,
    cfg: EvalConfig,
    *,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
) -> tuple[Tensor, Tensor]:
    """(CLS features (N, D), labels (N,)) for every readable image under root (an image folder or shards)."""
    dataset = labelled_images(str(root), eval_transform(cfg))
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False, num_workers=num_workers)
    features, labels = extract(backbone.eval().to(device), loader, device=device, desc=f"features {Path(root).name}")
    logger.info("extracted %d x %d features from %s", *features.shape, root)
    return features, labels


def labels_by_name(labels: torch.Tensor, classes: list[str], reference: list[str]) -> torch.Tensor:
    """`labels` indexing `classes`, re-indexed into `reference` by class name; -1 where it has no such class."""
    index = {name: i for i, name in enumerate(reference)}
    table = torch.tensor([index.get(name, -1) for name in classes] or [-1], dtype=torch.long)
    return table[labels]
