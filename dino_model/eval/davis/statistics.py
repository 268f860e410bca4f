"""Per-object mean, recall and decay of J and F, and their aggregation into the DAVIS 2017 table.

Follows `davis2017-evaluation` (`utils.db_statistics`, `evaluation.py`, `evaluation_method.py`):
each object's per-frame series gives a mean (NaNs ignored), a recall (fraction of frames above 0.5)
and a decay (mean of the first quarter minus mean of the last quarter, with quarter edges
`round(linspace(1, n, 5) + 1e-10) - 1` and neighbouring quarters sharing their edge frame). The
global numbers are plain means over objects, not sequences, and J&F-Mean = (J-Mean + F-Mean) / 2.
The official code casts the quarter edges to uint8, which wraps beyond 256 frames; here they are
plain integers (identical for every DAVIS sequence, all shorter than that).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

N_DECAY_BINS = 4
RECALL_THRESHOLD = 0.5
GLOBAL_COLUMNS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")


@dataclass(frozen=True)
class ObjectScores:
    """One object's per-frame J and F over the evaluated frames (first and last excluded)."""

    name: str  # "<sequence>_<object id>", as in the official per-sequence CSV
    j: np.ndarray
    f: np.ndarray


def decay_bin_edges(n_frames: int) -> np.ndarray:
    """Start indices of the four decay quarters plus the last index, e.g. [0, 9, 19, 28, 37] for 38."""
    return (np.round(np.linspace(1, n_frames, N_DECAY_BINS + 1) + 1e-10) - 1).astype(np.int64)


def series_statistics(values: np.ndarray) -> tuple[float, float, float]:
    """(mean, recall, decay) of one per-frame series, as `db_statistics` computes them."""
    values = np.asarray(values, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # all-NaN or empty slices give NaN
        mean = float(np.nanmean(values))
        recall = float(np.nanmean(values > RECALL_THRESHOLD))
        edges = decay_bin_edges(len(values))
        bins = [values[edges[i] : edges[i + 1] + 1] for i in range(N_DECAY_BINS)]
        decay = float(np.nanmean(bins[0]) - np.nanmean(bins[-1]))
    return mean, recall, decay


def object_table(objects: list[ObjectScores]) -> list[dict[str, float | str]]:
    """One row per object: J and F mean, recall and decay (the per-sequence CSV has J-Mean and F-Mean)."""
    rows: list[dict[str, float | str]] = []
    for obj in objects:
        jm, jr, jd = series_statistics(obj.j)
        fm, fr, fd = series_statistics(obj.f)
        rows.append({"Sequence": obj.name, "J-Mean": jm, "J-Recall": jr, "J-Decay": jd,
                     "F-Mean": fm, "F-Recall": fr, "F-Decay": fd})
    return rows


def global_statistics(rows: list[dict[str, float | str]]) -> dict[str, float]:
    """The official global table: means over objects of each statistic, and J&F-Mean."""
    if not rows:
        return {name: float("nan") for name in GLOBAL_COLUMNS}
    out = {name: float(np.mean([row[name] for row in rows])) for name in GLOBAL_COLUMNS[1:]}
    return {"J&F-Mean": (out["J-Mean"] + out["F-Mean"]) / 2, **out}
