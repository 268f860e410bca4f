"""Trapezoidal AP, junk handling, mP@k and the chunked ranking against hand-computed rankings and a
literal per-query loop of the benchmark's definition."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dino_model.errors import DataError
from dino_model.eval.retrieval import compute_ap, compute_map, positive_positions, rank_and_score


def loop_ap(ranks: list[int], nres: int) -> float:
    """The benchmark's AP written as its loop: one trapezoid per positive."""
    ap = 0.0
    for j, rank in enumerate(ranks):
        precision_0 = 1.0 if rank == 0 else j / rank
        ap += (precision_0 + (j + 1) / (rank + 1)) / (2.0 * nres)
    return ap


@pytest.mark.parametrize(("ranks", "n", "expected"), [
    ([0, 1, 2], 3, 1.0),  # perfect
    ([3, 4], 2, (1 / 4 / 2 + (1 / 4 + 2 / 5) / 2) / 2),  # worst: last two of five = 0.225
    ([0, 2], 2, (1.0 + (1 / 2 + 2 / 3) / 2) / 2),  # interleaved: 19/24
    ([1], 1, 0.25),  # one positive second: (0 + 1/2) / 2
    ([0], 2, 0.5),  # a positive never retrieved adds nothing
    ([], 3, 0.0),
])
def test_compute_ap_by_hand(ranks, n, expected):
    assert compute_ap(ranks, n) == pytest.approx(expected)
    assert compute_ap(ranks, n) == pytest.approx(loop_ap(ranks, n))


def test_worst_and_interleaved_values():
    assert compute_ap([3, 4], 2) == pytest.approx(0.225)
    assert compute_ap([0, 2], 2) == pytest.approx(19 / 24)


def test_junk_moves_later_positives_up():
    order = np.array([5, 3, 7, 1, 2])  # positives 7 and 1 at positions 2 and 3, junk 3 at position 1
    assert positive_positions(order, [1, 7]).tolist() == [2, 3]
    assert positive_positions(order, [1, 7], junk=[3]).tolist() == [1, 2]
    gnd = [{"ok": [1, 7], "junk": [3]}, {"ok": [1, 7]}]
    m, aps, _, _ = compute_map(np.stack([order, order], axis=1), gnd)
    assert aps[0] == pytest.approx((0.25 + (1 / 2 + 2 / 3) / 2) / 2)  # 5/12
    assert aps[1] == pytest.approx((1 / 3 / 2 + (1 / 3 + 1 / 2) / 2) / 2)  # 7/24
    assert m == pytest.approx((5 / 12 + 7 / 24) / 2)
    # junk ranked first makes the positive behind it perfect; junk ranked last changes nothing
    assert compute_map(np.array([[3], [1]]), [{"ok": [1], "junk": [3]}])[0] == 1.0
    assert compute_map(np.array([[1], [3]]), [{"ok": [1], "junk": [3]}])[0] == 1.0


def test_positive_and_junk_must_differ():
    with pytest.raises(ValueError, match="both a positive and junk"):
        positive_positions(np.arange(4), [1, 2], junk=[2])


def test_precision_at_k_and_queries_without_positives():
    order = np.array([[4], [0], [2], [3], [1]])  # positives 4 and 2: 1-based positions 1 and 3
    gnd = [{"ok": [4, 2]}]
    m, _, pr, prs = compute_map(np.concatenate([order, order], axis=1), gnd + [{"ok": []}], kappas=[1, 2, 5])
    # k capped at the last positive's position: @1 = 1/1, @2 = 1/2, @5 -> k = 3: 2/3
    assert pr.tolist() == pytest.approx([1.0, 0.5, 2 / 3]) and np.isnan(prs[1]).all()
    assert m == pytest.approx(19 / 24)  # the empty query is left out of the mean
    with pytest.raises(DataError, match="no query has a positive"):
        compute_map(order, [{"ok": []}])


def official_style(query_x, query_y, db_x, db_y, leave_one_out, ks):
    """compute_map on a full (database, queries) rank matrix with gnd built from the labels."""
    q = torch.nn.functional.normalize(query_x, dim=1)
    d = torch.nn.functional.normalize(db_x, dim=1)
    ranks = torch.argsort(q @ d.T, dim=1, descending=True, stable=True).numpy().T
    gnd = []
    for i, y in enumerate(query_y.tolist()):
        ok = [j for j, z in enumerate(db_y.tolist()) if z == y and not (leave_one_out and j == i)]
        gnd.append({"ok": ok, "junk": [i] if leave_one_out else []})
    return compute_map(ranks, gnd, ks)


@pytest.mark.parametrize("leave_one_out", [True, False])
@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_chunked_ranking_matches_the_full_rank_matrix(leave_one_out, chunk):
    g = torch.Generator().manual_seed(0)
    db_x, db_y = torch.randn(40, 6, generator=g), torch.randint(0, 4, (40,), generator=g)
    if leave_one_out:
        q_x, q_y = db_x, db_y
    else:
        q_x, q_y = torch.randn(15, 6, generator=g), torch.randint(0, 5, (15,), generator=g)  # class 4: none
    m, aps, pr, _ = official_style(q_x, q_y, db_x, db_y, leave_one_out, [1, 5, 10])
    scores = rank_and_score(q_x, q_y, db_x, db_y, ks=[1, 5, 10], leave_one_out=leave_one_out, chunk_size=chunk)
    np.testing.assert_allclose(scores.ap, aps)
    summary = scores.summary("retrieval")
    assert summary["retrieval_map"] == pytest.approx(100 * m)
    assert [summary[f"retrieval_mp_at_{k}"] for k in (1, 5, 10)] == pytest.approx(list(100 * pr))
    # recall@1 = precision@1; recall@k grows with k
    assert summary["retrieval_recall_at_1"] == pytest.approx(summary["retrieval_mp_at_1"])
    assert summary["retrieval_recall_at_1"] <= summary["retrieval_recall_at_5"] <= summary["retrieval_recall_at_10"]


def test_recall_at_k_by_hand():
    # query along x; database: class 1 at cos 1, class 0 at cos 0.8 and 0.6, class 1 at cos -1
    db = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [-1.0, 0.0]])
    db_y = torch.tensor([1, 0, 0, 1])
    q, q_y = torch.tensor([[3.0, 0.0], [3.0, 0.0]]), torch.tensor([0, 1])
    s = rank_and_score(q, q_y, db, db_y, ks=[1, 2])
    assert s.first.tolist() == [1, 0]
    assert s.ap.tolist() == pytest.approx([((0 + 1 / 2) / 2 + (1 / 2 + 2 / 3) / 2) / 2,
                                           (1.0 + (1 / 3 + 2 / 4) / 2) / 2])  # 17/24
    out = s.summary("r")
    assert out["r_recall_at_1"] == 50.0 and out["r_recall_at_2"] == 100.0
