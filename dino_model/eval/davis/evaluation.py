"""Scoring a results folder against DAVIS ground truth: the semi-supervised task of DAVIS 2017.

As `davis2017-evaluation` does (`evaluation.py`, `davis.py`, `results.py`): every annotated frame
is read, void (255) becomes background, the number of objects is the largest id in the first
ground-truth frame, and the first and last frames are left out. A result may hold fewer objects
than the ground truth (the missing ones score as empty masks) but not more, and each result mask
must have the ground truth's size. One `ObjectScores` per (sequence, object) comes back.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from dino_model.data.folders import required_image
from dino_model.errors import DataError
from dino_model.eval.davis.io import annotation_paths, read_mask
from dino_model.eval.davis.metrics import BOUND_TH, contour_accuracy, region_similarity
from dino_model.eval.davis.statistics import ObjectScores

logger = logging.getLogger(__name__)


def score_sequence(gt: np.ndarray, result: np.ndarray, *, n_objects: int,
                   bound_th: float = BOUND_TH) -> tuple[np.ndarray, np.ndarray]:
    """Per-object J and F over the given frames.

    Args:
        gt: ground-truth ids (T, H, W); ids above n_objects are ignored.
        result: predicted ids (T, H, W) for the same frames.
        n_objects: the object count (the largest id of the first ground-truth frame).
        bound_th: F's boundary tolerance.

    Returns:
        (J, F), each (n_objects, T).

    Raises:
        DataError: if the result holds an object id beyond the ground truth's count.
    """
    if gt.shape != result.shape:
        raise DataError(f"result masks {result.shape} do not match the ground truth {gt.shape} (T, H, W)")
    extra = int(result.max()) if result.size else 0
    if extra > n_objects:
        hint = " (DAVIS 2016 masks hold 0/255: read them with mask_format 'auto' or '2016')" if not n_objects else ""
        raise DataError(f"a result mask holds object id {extra}, but the ground truth has {n_objects} object(s)"
                        + hint)
    j = np.zeros((n_objects, len(gt)))
    f = np.zeros((n_objects, len(gt)))
    for k in range(1, n_objects + 1):
        gt_k, res_k = gt == k, result == k
        j[k - 1] = region_similarity(gt_k, res_k)
        f[k - 1] = contour_accuracy(gt_k, res_k, bound_th=bound_th)
    return j, f


def evaluate_sequence(davis_root: str | Path, results_dir: str | Path, sequence: str, *,
                      resolution: str = "480p", annotations: str = "Annotations", mask_format: str = "auto",
                      max_frames: int | None = None, bound_th: float = BOUND_TH) -> list[ObjectScores]:
    """Score `results_dir/<sequence>/<frame>.png` against the sequence's annotations.

    max_frames, when set, scores only the first max_frames annotated frames (its first and last
    still excluded), for runs that propagated a prefix of each video.
    """
    gt_paths = annotation_paths(davis_root, sequence, resolution=resolution, annotations=annotations)
    gt_paths = gt_paths[:max_frames] if max_frames else gt_paths
    evaluated = gt_paths[1:-1]
    if not evaluated:
        logger.warning("%s has %d annotated frame(s); nothing is left once the first and last are excluded",
                       sequence, len(gt_paths))
        return []
    n_objects = int(read_mask(gt_paths[0], mask_format=mask_format).max())
    gt = np.stack([read_mask(p, mask_format=mask_format) for p in evaluated])
    result = np.stack([_read_result(Path(results_dir) / sequence / p.name, gt.shape[1:]) for p in evaluated])
    j, f = score_sequence(gt, result, n_objects=n_objects, bound_th=bound_th)
    return [ObjectScores(f"{sequence}_{k + 1}", j[k], f[k]) for k in range(n_objects)]


def _read_result(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"result mask {path} is missing; results need one PNG per annotated frame")
    with required_image(path) as img:
        mask = np.array(img)  # raw ids, as the official reader takes them
    if mask.shape != shape:
        raise DataError(f"result mask {path} is {mask.shape}, the ground truth is {shape} (H, W)")
    return mask
