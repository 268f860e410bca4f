"""Copy detection with a checkpoint end to end, on any image folder.

Copydays and the YFCC100M distractors cannot be downloaded here, so the protocol's idea is rebuilt
from one folder: a seeded draw of `originals` images is held out and strongly edited into queries
(one per original and edit), every other image is a distractor; the database is originals plus
distractors, and each query must find the original it was made from. Images are resized to a square
of the checkpoint's evaluation size, as the official evaluation resizes to a fixed square.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from dino_model.config import EvalConfig
from dino_model.data.datasets import ImageFolderDataset
from dino_model.data.folders import required_image
from dino_model.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from dino_model.errors import DataError
from dino_model.eval.copydetection import check_edits, cls_gem_embedding, make_queries, score_copies
from dino_model.eval.features import extract
from dino_model.eval.report import build_report, metrics_table, write_report
from dino_model.eval.search_settings import CopyDetectionConfig
from dino_model.eval.settings import checkpoint_config
from dino_model.models.loading import load_backbone

logger = logging.getLogger(__name__)


class ImageListDataset(Dataset):
    """In-memory PIL images; item = (transform(image), index)."""

    def __init__(self, images: Sequence[Image.Image], transform: T.Compose) -> None:
        self.images, self.transform = list(images), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.transform(self.images[index]), index


def square_transform(size: int) -> T.Compose:
    return T.Compose([T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def split_images(root: str | Path, n_originals: int, seed: int) -> tuple[list[Path], list[Path]]:
    """(originals, distractors): a seeded draw of n_originals paths, the rest (both in folder order)."""
    paths = [s.path for s in ImageFolderDataset(root).samples]
    if n_originals < 1 or len(paths) < n_originals + 2:
        raise DataError(f"copy detection needs at least {max(n_originals, 1) + 2} images in {root} "
                        f"({n_originals} originals + 2 distractors); found {len(paths)}")
    chosen = np.zeros(len(paths), dtype=bool)
    chosen[np.random.default_rng(seed).permutation(len(paths))[:n_originals]] = True
    pairs = list(zip(paths, chosen, strict=True))
    return [p for p, c in pairs if c], [p for p, c in pairs if not c]


def embed_images(backbone: nn.Module, images: Sequence[Image.Image], cfg: EvalConfig, gem_p: float,
                 device: str, desc: str) -> Tensor:
    loader = DataLoader(ImageListDataset(images, square_transform(cfg.image_size)), batch_size=cfg.batch_size)
    features, _ = extract(partial(cls_gem_embedding, backbone.eval().to(device), p=gem_p), loader, device=device,
                          desc=desc)
    return features


def _load(paths: Sequence[Path]) -> list[Image.Image]:
    """The scanned images as RGB; one changed since the scan (unreadable, over the pixel cap) is a DataError."""
    images = []
    for path in paths:
        with required_image(path) as im:
            images.append(im.convert("RGB"))
    return images


def run_copydetection_eval(checkpoint: str | Path, cfg: EvalConfig | None = None, *, images_dir: str | Path,
                           settings: CopyDetectionConfig | None = None, output: str | Path | None = None,
                           device: str = "cpu") -> dict[str, Any]:
    """Score the teacher backbone of `checkpoint` at copy detection; writes and returns the metrics report."""
    cfg = cfg or checkpoint_config(checkpoint).eval
    settings = settings or CopyDetectionConfig()
    check_edits(settings.edits)
    original_paths, distractor_paths = split_images(images_dir, settings.originals, settings.seed)
    originals, distractors = _load(original_paths), _load(distractor_paths)
    queries = make_queries(originals, distractors, settings.edits, settings.seed)
    backbone, _ = load_backbone(checkpoint)
    embed = partial(embed_images, backbone, cfg=cfg, gem_p=settings.gem_p, device=device)
    originals_x, distractors_x = embed(originals, desc="originals"), embed(distractors, desc="distractors")
    query_x = embed([q.image for q in queries], desc="queries")
    sources, edits = [q.source for q in queries], [q.edit for q in queries]
    result = score_copies(query_x, sources, edits, originals_x, distractors_x, settings)
    metrics = result.metrics()
    if settings.whitening:
        metrics |= score_copies(query_x, sources, edits, originals_x, distractors_x, settings,
                                whiten=False).metrics("_no_whitening")
    details = {"images_dir": str(images_dir), "n_originals": len(originals), "n_distractors": len(distractors),
               "n_queries": len(queries), "edits": list(settings.edits), "seed": settings.seed,
               "gem_p": settings.gem_p, "feature_dim": int(query_x.shape[1]), "image_size": cfg.image_size,
               "whitening": None if result.whitening is None else {
                   "power": settings.whiten_power, "dim": int(result.whitening.projection.shape[0]),
                   "kept_energy": result.whitening.kept_energy},
               "originals": [str(p) for p in original_paths],
               "per_query": [{"source": s, "edit": e, "rank": int(r)}
                             for s, e, r in zip(sources, edits, result.scores.first, strict=True)]}
    report = build_report("copydetection", checkpoint, metrics, details)
    out = Path(output) if output else Path(checkpoint).parent / "eval" / "copydetection.json"
    md = (f"# Copy detection\n\n{checkpoint}: mAP {metrics['copydetection_map']:.2f}%, recall@1 "
          f"{metrics['copydetection_recall_at_1']:.2f}% over {len(queries)} queries among {len(distractors)} "
          f"distractors\n\n" + metrics_table(metrics))
    write_report(report, out, md)
    logger.info("copy detection mAP %.2f%%, recall@1 %.2f%% over %d queries", metrics["copydetection_map"],
                metrics["copydetection_recall_at_1"], len(queries))
    return report | {"report_path": str(out)}
