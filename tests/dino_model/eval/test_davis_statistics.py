"""Mean, recall, decay and the per-object aggregation of the DAVIS 2017 table."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dino_model.eval.davis.statistics import (
    ObjectScores,
    decay_bin_edges,
    global_statistics,
    object_table,
    series_statistics,
)


def test_decay_bin_edges_match_official() -> None:
    np.testing.assert_array_equal(decay_bin_edges(38), [0, 9, 19, 28, 37])
    # linspace(1, 8, 5) = [1, 2.75, 4.5, 6.25, 8] -> rounded (4.5 + 1e-10 goes up) -> minus 1
    np.testing.assert_array_equal(decay_bin_edges(8), [0, 2, 4, 5, 7])


def test_series_statistics_by_hand() -> None:
    values = np.array([1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    mean, recall, decay = series_statistics(values)
    assert mean == 0.5
    assert recall == 0.5
    assert decay == 1.0  # first quarter v[0:3] all 1, last quarter v[5:8] all 0


def test_series_statistics_recall_is_strictly_above_half_and_nans_are_skipped() -> None:
    values = np.array([0.5, 0.6, np.nan, 0.9])
    mean, recall, decay = series_statistics(values)
    assert mean == pytest.approx((0.5 + 0.6 + 0.9) / 3)
    assert recall == pytest.approx(2 / 4)  # NaN > 0.5 is False, and 0.5 is not above 0.5
    # 4 frames: edges [0, 1, 2, 2, 3]; first bin v[0:2] = (0.5, 0.6), last bin v[2:4] = (nan, 0.9)
    assert decay == pytest.approx(0.55 - 0.9)


def test_aggregation_is_per_object_and_jf_is_the_mean_of_j_and_f() -> None:
    ones, zeros = np.ones(6), np.zeros(6)
    objects = [
        ObjectScores("two-objects_1", ones, ones),
        ObjectScores("two-objects_2", ones, zeros),
        ObjectScores("one-object_1", zeros, zeros),
    ]
    rows = object_table(objects)
    assert [r["Sequence"] for r in rows] == ["two-objects_1", "two-objects_2", "one-object_1"]
    table = global_statistics(rows)
    assert table["J-Mean"] == pytest.approx(2 / 3)  # per object, not (1 + 0) / 2 per sequence
    assert table["F-Mean"] == pytest.approx(1 / 3)
    assert table["J&F-Mean"] == pytest.approx(0.5)
    assert table["J-Recall"] == pytest.approx(2 / 3)
    assert table["J-Decay"] == 0.0


def test_empty_table_is_nan() -> None:
    assert all(math.isnan(v) for v in global_statistics([]).values())
