"""J and F against hand-computed cases and an independent distance-based reference."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from dino_model.eval.davis.metrics import (
    boundary_map,
    boundary_precision_recall,
    boundary_tolerance,
    contour_accuracy,
    region_similarity,
)


def square(size: int, top: int, left: int, side: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


def test_identical_masks_score_one() -> None:
    mask = square(40, 5, 7, 12)
    assert region_similarity(mask, mask) == 1.0
    assert contour_accuracy(mask, mask) == 1.0


def test_shifted_square_jaccard_by_hand() -> None:
    gt = square(40, 10, 10, 10)
    pred = square(40, 10, 12, 10)  # 2 px to the right: overlap 8 x 10 = 80, union 120
    assert region_similarity(gt, pred) == pytest.approx(80 / 120)


def test_empty_mask_conventions() -> None:
    empty, full = np.zeros((20, 30), bool), square(30, 5, 5, 8)[:20]
    assert region_similarity(empty, empty) == 1.0  # union 0 -> 1
    assert contour_accuracy(empty, empty) == 1.0  # no boundary on either side: P = R = 1
    assert region_similarity(full, empty) == 0.0
    assert contour_accuracy(full, empty) == 0.0  # missed object: P = 1, R = 0
    assert boundary_precision_recall(full, empty) == (1.0, 0.0)
    assert contour_accuracy(empty, full) == 0.0  # hallucinated object: P = 0, R = 1
    assert boundary_precision_recall(empty, full) == (0.0, 1.0)


def test_frame_stack_gives_one_value_per_frame() -> None:
    gt = np.stack([square(20, 2, 2, 5), np.zeros((20, 20), bool)])
    pred = np.stack([square(20, 2, 2, 5), square(20, 0, 0, 3)])
    np.testing.assert_allclose(region_similarity(gt, pred), [1.0, 0.0])
    np.testing.assert_allclose(contour_accuracy(gt, pred), [1.0, 0.0])


def test_seg2bmap_of_a_square_by_hand() -> None:
    # 2x2 object at rows 1-2, cols 1-2 of a 4x4 image. Marked: pixels differing from their east,
    # south or south-east neighbour: the outer L above/left of the object and its inner right/bottom L.
    seg = square(4, 1, 1, 2)
    expected = np.array(
        [
            [1, 1, 1, 0],
            [1, 0, 1, 0],
            [1, 1, 1, 0],
            [0, 0, 0, 0],
        ],
        dtype=bool,
    )
    np.testing.assert_array_equal(boundary_map(seg), expected)


def test_seg2bmap_last_row_and_column_rules() -> None:
    seg = np.zeros((3, 3), bool)
    seg[2, 1] = True  # bottom row: only the east comparison counts
    b = boundary_map(seg)
    assert b[2, 0] and b[2, 1] and not b[2, 2]
    seg = np.ones((3, 3), bool)  # object touching every border: no boundary at all
    assert not boundary_map(seg).any()


def test_tolerance_matches_official_pixels() -> None:
    assert boundary_tolerance(480, 854) == 8
    assert boundary_tolerance(480, 910) == 9
    assert boundary_tolerance(480, 1152) == 10
    assert boundary_tolerance(480, 854, bound_th=3) == 3  # >= 1: pixels


def half_plane(rows: int, cols: int, edge: int) -> np.ndarray:
    mask = np.zeros((rows, cols), bool)
    mask[:, :edge] = True
    return mask


@pytest.mark.parametrize(("tolerance", "expected"), [(3, 1.0), (4, 1.0), (2, 0.0)])
def test_boundary_offset_within_or_beyond_tolerance(tolerance: int, expected: float) -> None:
    # Boundaries are columns 19 and 22 (3 px apart) over all 40 rows.
    gt, pred = half_plane(40, 40, 20), half_plane(40, 40, 23)
    assert contour_accuracy(gt, pred, bound_th=tolerance) == pytest.approx(expected)


def test_partial_boundary_offset_by_hand() -> None:
    # pred's edge is 3 px further right in the top half only. Its boundary: column 22 for rows
    # 0-19, row 19 columns 19-21 (the step), column 19 for rows 20-39: 43 pixels; gt's: column 19,
    # 40 pixels. With a 1-px disk, 22 pred pixels lie near gt's boundary (the step's first two and
    # the 20 shared ones) and 22 gt pixels near pred's (rows 18-39). F = 2 * 22 / (43 + 40).
    gt = half_plane(40, 40, 20)
    pred = gt.copy()
    pred[:20, :23] = True
    precision, recall = boundary_precision_recall(gt, pred, bound_th=1)
    assert precision == pytest.approx(22 / 43)
    assert recall == pytest.approx(22 / 40)
    assert contour_accuracy(gt, pred, bound_th=1) == pytest.approx(44 / 83)


def reference_f(gt: np.ndarray, pred: np.ndarray, radius: int) -> float:
    """Independent form: a boundary pixel matches if the other boundary is within Euclidean radius."""
    gt_b, pred_b = boundary_map(gt), boundary_map(pred)
    if not gt_b.any() or not pred_b.any():
        return float(gt_b.any() == pred_b.any())
    dist_to_gt = ndimage.distance_transform_edt(~gt_b)
    dist_to_pred = ndimage.distance_transform_edt(~pred_b)
    precision = (dist_to_gt[pred_b] <= radius).mean()
    recall = (dist_to_pred[gt_b] <= radius).mean()
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


@pytest.mark.parametrize(("size", "radius", "seed"), [((48, 64), 1, 0), ((60, 90), 2, 1), ((120, 80), 5, 2)])
def test_f_matches_distance_reference_on_random_blobs(size: tuple[int, int], radius: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    gt = ndimage.gaussian_filter(rng.random(size), 4) > 0.5
    pred = ndimage.gaussian_filter(rng.random(size), 4) > 0.5
    assert contour_accuracy(gt, pred, bound_th=radius) == pytest.approx(reference_f(gt, pred, radius), abs=1e-12)


@pytest.mark.parametrize("radius", [1, 4, 8])
def test_cropped_dilation_equals_whole_image_dilation(radius: int) -> None:
    from skimage.morphology import disk

    from dino_model.eval.davis.metrics import dilate

    rng = np.random.default_rng(radius)
    boundary = np.zeros((50, 70), bool)
    boundary[rng.integers(0, 50, 6), rng.integers(0, 70, 6)] = True
    boundary[0, 5] = boundary[49, 69] = True  # on the image border
    structure = disk(radius).astype(bool)
    np.testing.assert_array_equal(dilate(boundary, structure), ndimage.binary_dilation(boundary, structure=structure))
    assert not dilate(np.zeros((5, 5), bool), structure).any()
