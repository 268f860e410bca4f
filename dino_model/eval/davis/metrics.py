"""Region similarity J and contour accuracy F, as the official DAVIS 2017 evaluation defines them.

Pont-Tuset et al. 2017 (arXiv:1704.00675) and the `davis2017-evaluation` package (`metrics.py`):
J is the Jaccard index of two binary masks (1 when both are empty); F is the F-measure of boundary
precision and recall, where the boundary of a mask is D. Martin's one-pixel `seg2bmap` map and a
boundary pixel counts as matched when the other boundary lies within a disk of
`ceil(0.008 * image diagonal)` pixels. The official code dilates with OpenCV; a binary dilation
with the same `skimage.morphology.disk` gives the same map (the disk is symmetric, borders pad 0).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from skimage.morphology import disk

BOUND_TH = 0.008  # fraction of the image diagonal (official default)


def region_similarity(gt: np.ndarray, pred: np.ndarray) -> np.ndarray | float:
    """J = |gt ∩ pred| / |gt ∪ pred| over the last two axes; 1 where both masks are empty.

    Args:
        gt: binary mask(s), (H, W) or (T, H, W).
        pred: binary mask(s) of the same shape.

    Returns:
        A float for (H, W) inputs, else an array (T,).
    """
    if gt.shape != pred.shape:
        raise ValueError(f"mask shapes differ: ground truth {gt.shape}, prediction {pred.shape}")
    gt, pred = gt.astype(bool), pred.astype(bool)
    inter = np.sum(gt & pred, axis=(-2, -1))
    union = np.sum(gt | pred, axis=(-2, -1))
    j = np.where(union == 0, 1.0, inter / np.maximum(union, 1))
    return float(j) if j.ndim == 0 else j


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """One-pixel boundary of a binary (H, W) mask (`_seg2bmap` of the BSDS / DAVIS code).

    A pixel is on the boundary if it differs from its east, south or south-east neighbour; the last
    row compares east only, the last column south only, and the bottom-right pixel is never set.
    """
    seg = mask.astype(bool)
    east, south, south_east = np.zeros_like(seg), np.zeros_like(seg), np.zeros_like(seg)
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    b[-1, :] = seg[-1, :] ^ east[-1, :]
    b[:, -1] = seg[:, -1] ^ south[:, -1]
    b[-1, -1] = False
    return b


def boundary_tolerance(height: int, width: int, bound_th: float = BOUND_TH) -> int:
    """Tolerance in pixels: bound_th itself if >= 1, else ceil(bound_th * sqrt(H² + W²))."""
    return int(bound_th) if bound_th >= 1 else math.ceil(bound_th * math.hypot(height, width))


def boundary_precision_recall(gt: np.ndarray, pred: np.ndarray, *, bound_th: float = BOUND_TH) -> tuple[float, float]:
    """(precision, recall) of pred's boundary against gt's, with the official empty-boundary cases."""
    if gt.shape != pred.shape:
        raise ValueError(f"mask shapes differ: ground truth {gt.shape}, prediction {pred.shape}")
    radius = boundary_tolerance(*gt.shape[-2:], bound_th=bound_th)
    structure = disk(radius).astype(bool)
    gt_b, pred_b = boundary_map(gt), boundary_map(pred)
    n_gt, n_pred = int(gt_b.sum()), int(pred_b.sum())
    if n_pred == 0 and n_gt > 0:
        return 1.0, 0.0
    if n_pred > 0 and n_gt == 0:
        return 0.0, 1.0
    if n_pred == 0 and n_gt == 0:
        return 1.0, 1.0
    gt_dil, pred_dil = dilate(gt_b, structure), dilate(pred_b, structure)
    precision = float((pred_b & gt_dil).sum()) / n_pred
    recall = float((gt_b & pred_dil).sum()) / n_gt
    return precision, recall


def dilate(boundary: np.ndarray, structure: np.ndarray) -> np.ndarray:
    """Binary dilation, computed only over the boundary's bounding box grown by the disk's radius.

    Pixels further away cannot be reached, so the result equals dilating the whole image (with
    zero padding, as OpenCV's default border does), at a fraction of the cost for small objects.
    """
    out = np.zeros_like(boundary)
    rows, cols = np.flatnonzero(boundary.any(axis=1)), np.flatnonzero(boundary.any(axis=0))
    if not len(rows):
        return out
    pad = structure.shape[0] // 2
    r0, r1 = max(rows[0] - pad, 0), min(rows[-1] + pad + 1, boundary.shape[0])
    c0, c1 = max(cols[0] - pad, 0), min(cols[-1] + pad + 1, boundary.shape[1])
    out[r0:r1, c0:c1] = ndimage.binary_dilation(boundary[r0:r1, c0:c1], structure=structure)
    return out


def contour_accuracy(gt: np.ndarray, pred: np.ndarray, *, bound_th: float = BOUND_TH) -> np.ndarray | float:
    """F = 2PR / (P + R) (0 when P + R = 0) per frame.

    Args:
        gt: binary mask(s), (H, W) or (T, H, W).
        pred: binary mask(s) of the same shape.
        bound_th: tolerance as a fraction of the diagonal (< 1) or in pixels (>= 1).

    Returns:
        A float for (H, W) inputs, else an array (T,).
    """
    if gt.ndim == 3:
        return np.array([contour_accuracy(g, p, bound_th=bound_th) for g, p in zip(gt, pred, strict=True)])
    precision, recall = boundary_precision_recall(gt, pred, bound_th=bound_th)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)
