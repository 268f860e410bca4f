"""Ranking metrics of nearest-neighbour image retrieval: average precision as the revisited
Oxford/Paris benchmark (and the official DINO retrieval evaluation) computes it, recall@k and mP@k.

AP is the area under the precision-recall curve summed as trapezoids: the i-th positive (0-based),
found at junk-adjusted 0-based position r, adds recall step 1/n_positives times the mean of the
precision just before it (i / r, or 1 when r = 0) and just after it ((i + 1) / (r + 1)). Junk
images (in leave-one-out search, the query itself) are removed from the ranking before positions
are counted: each positive moves up by the number of junk images ranked above it. A query without
positives is left out of every mean, as the benchmark does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from dino_model.errors import DataError
from dino_model.eval.search_settings import check_int, check_ints


def compute_ap(ranks: Sequence[int] | np.ndarray, n_positives: int) -> float:
    """Trapezoidal AP of one query from the ascending 0-based positions of the positives it found."""
    if n_positives <= 0:
        raise ValueError("average precision needs at least one positive")
    r = np.asarray(ranks, dtype=np.float64)
    j = np.arange(len(r), dtype=np.float64)
    before = np.where(r == 0, 1.0, j / np.maximum(r, 1.0))
    after = (j + 1) / (r + 1)
    return float(((before + after) / 2.0).sum() / n_positives)


def positive_positions(order: np.ndarray, positives: Sequence[int], junk: Sequence[int] = ()) -> np.ndarray:
    """0-based positions of `positives` in the ranking `order` (database indices, best first), each
    lowered by the number of `junk` indices ranked above it."""
    if np.intersect1d(positives, junk).size:
        raise ValueError("an image is both a positive and junk")
    pos = np.flatnonzero(np.isin(order, positives))
    junk_pos = np.flatnonzero(np.isin(order, junk))
    return pos - np.searchsorted(junk_pos, pos)


def precision_at(positions: np.ndarray, k: int) -> float:
    """The benchmark's precision@k: k is capped at the last positive's 1-based position."""
    one_based = positions + 1
    kq = min(int(one_based.max()), k)
    return float((one_based <= kq).sum() / kq)


def compute_map(ranks: np.ndarray, gnd: Sequence[Mapping[str, Sequence[int]]], kappas: Sequence[int] = ()
                ) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """(mAP, AP per query, mean precision@kappas, precision@kappas per query) as the benchmark returns them.

    ranks: (database, queries) database indices, best first per column; gnd[i]: {"ok": positives,
    "junk": ignored} of query i. Queries without positives get NaN and are left out of the means.
    """
    n_q = len(gnd)
    aps, prs = np.zeros(n_q), np.zeros((n_q, len(kappas)))
    for i, g in enumerate(gnd):
        ok = np.asarray(g["ok"], dtype=np.int64)
        if ok.size == 0:
            aps[i], prs[i] = np.nan, np.nan
            continue
        pos = positive_positions(ranks[:, i], ok, np.asarray(g.get("junk", ()), dtype=np.int64))
        aps[i] = compute_ap(pos, ok.size)
        prs[i] = [precision_at(pos, k) for k in kappas]
    valid = ~np.isnan(aps)
    if not valid.any():
        raise DataError("no query has a positive in the database")
    return float(aps[valid].mean()), aps, prs[valid].mean(axis=0), prs


@dataclass
class QueryScores:
    """Per-query results; NaN AP and -1 first position for a query without positives."""

    ap: np.ndarray  # (Q,)
    first: np.ndarray  # (Q,) junk-adjusted position of the best-ranked positive
    precision: np.ndarray  # (Q, len(ks)) precision@k
    ks: tuple[int, ...]

    @property
    def valid(self) -> np.ndarray:
        return ~np.isnan(self.ap)

    def summary(self, prefix: str) -> dict[str, float]:
        """{prefix_map, prefix_recall_at_k, prefix_mp_at_k} in percent over the queries with positives."""
        v = self.valid
        if not v.any():
            raise DataError("no query has a positive in the database")
        out = {f"{prefix}_map": 100.0 * float(self.ap[v].mean())}
        out |= {f"{prefix}_recall_at_{k}": 100.0 * float((self.first[v] < k).mean()) for k in self.ks}
        out |= {f"{prefix}_mp_at_{k}": 100.0 * float(self.precision[v, j].mean()) for j, k in enumerate(self.ks)}
        return out


def rank_and_score(query_x: Tensor, query_y: Tensor, db_x: Tensor, db_y: Tensor, *, ks: Sequence[int] = (1, 5, 10),
                   leave_one_out: bool = False, chunk_size: int = 1024) -> QueryScores:
    """Cosine ranking of the database for every query; positives share the query's label.

    Labels < 0 are never positive. leave_one_out: the queries are the database itself and query i
    is junk in its own ranking. Ties keep database order.
    """
    check_ints("recall_ks (--recall-k)", ks, 1)  # recall@0 and mP@0 are 0/0
    check_int("chunk_size", chunk_size, 1)
    if leave_one_out and len(query_x) != len(db_x):
        raise ValueError("leave-one-out needs the queries to be the database")
    q = torch.nn.functional.normalize(query_x.float(), dim=1)
    d = torch.nn.functional.normalize(db_x.float(), dim=1)
    qy, dy = query_y.numpy(), db_y.numpy()
    n_q = len(q)
    ap, first, prec = np.full(n_q, np.nan), np.full(n_q, -1, dtype=np.int64), np.full((n_q, len(ks)), np.nan)
    for start in range(0, n_q, chunk_size):
        sim = q[start:start + chunk_size] @ d.T
        order = torch.argsort(sim, dim=1, descending=True, stable=True).numpy()
        for row, i in enumerate(range(start, start + len(order))):
            if qy[i] < 0:
                continue
            relevant = dy[order[row]] == qy[i]
            junk = order[row] == i if leave_one_out else np.zeros_like(relevant)
            relevant &= ~junk
            if not relevant.any():
                continue
            pos = np.flatnonzero(relevant)
            pos = pos - np.searchsorted(np.flatnonzero(junk), pos)
            ap[i], first[i] = compute_ap(pos, pos.size), pos[0]
            prec[i] = [precision_at(pos, k) for k in ks]
    return QueryScores(ap=ap, first=first, precision=prec, ks=tuple(ks))
