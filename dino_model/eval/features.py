"""Frozen-backbone feature extraction in fixed-size batches, so memory grows with D, not with images.

Features are the L2-normalisable CLS outputs of the teacher backbone (the official k-NN and export
contract). Extraction runs under `torch.inference_mode`, in eval mode, fp32 unless asked.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from dino_model.config import EvalConfig
from dino_model.data.datasets import ImageFolderDataset
from dino_model.data.transforms import eval_transform
from dino_model.logs import progress

logger = logging.getLogger(__name__)


@torch.inference_mode()
def extract_features(
    backbone: nn.Module,
    root: str | Path,
    cfg: EvalConfig,
    *,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
) -> tuple[Tensor, Tensor]:
    """(features (N, D) float32 on CPU, labels (N,) int64) for every readable image under root."""
    dataset = ImageFolderDataset(root, transform=eval_transform(cfg))
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False, num_workers=num_workers)
    backbone = backbone.eval().to(device)
    feats, labels = [], []
    for images, y in progress(loader, desc=f"features {Path(root).name}", total=len(loader)):
        feats.append(backbone(images.to(device)).float().cpu())
        labels.append(y)
    features = torch.cat(feats)
    logger.info("extracted %d x %d features from %s", *features.shape, root)
    return features, torch.cat(labels)
