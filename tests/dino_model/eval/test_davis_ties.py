"""Top-k source selection under exact ties: exactly k sources, ties to the lower source index.

The official code keeps every source at least as large as the k-th value, so a tie at the k-th
place keeps more than k; here the documented rule is (affinity descending, source index ascending).
"""

from __future__ import annotations

import math

import pytest
import torch

from dino_model.eval.davis.config import PropagationParams
from dino_model.eval.davis.propagation import propagate_frame, top_k_sources


def stable_reference(column: list[float], k: int) -> set[int]:
    """The k sources first in the order (value descending, index ascending)."""
    return set(sorted(range(len(column)), key=lambda i: (-column[i], i))[:k])


def test_hand_picked_columns() -> None:
    aff = torch.tensor([[3.0, 5.0, 1.0], [1.0, 3.0, 4.0], [3.0, 3.0, 2.0], [3.0, 3.0, 3.0], [0.0, 0.0, 0.0]])
    keep = top_k_sources(aff, 2)
    assert keep[:, 0].nonzero().flatten().tolist() == [0, 2]  # three 3s tie at the top: the first two
    assert keep[:, 1].nonzero().flatten().tolist() == [0, 1]  # 5 above, then the first of three 3s
    assert keep[:, 2].nonzero().flatten().tolist() == [1, 3]  # no tie: the official selection
    assert torch.equal(top_k_sources(aff, 5), torch.ones_like(keep))


@pytest.mark.parametrize("k", [1, 3, 5, 12])
def test_matches_a_stable_sort_on_many_ties(k: int) -> None:
    gen = torch.Generator().manual_seed(k)
    aff = torch.randint(0, 4, (12, 40), generator=gen).float()  # 4 distinct values in 12 rows: ties everywhere
    keep = top_k_sources(aff, k)
    assert (keep.sum(dim=0) == k).all()
    for t in range(aff.shape[1]):
        assert set(keep[:, t].nonzero().flatten().tolist()) == stable_reference(aff[:, t].tolist(), k)


def _tied_case():
    """Target e1; first frame: 4 sources e1, e1, e1, e2 with classes 0, 1, 1, 0 (one-hot)."""
    e1, e2 = torch.eye(2)
    target = e1[None]  # (hw=1, D=2)
    sources = torch.stack([e1, e1, e1, e2])[None]  # (n_ctx=1, hw=4, D)
    labels = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0]])[None]  # (1, C=2, 4)
    return target, sources, labels


def test_hand_computed_propagation_with_a_tie() -> None:
    # Affinities exp(1), exp(1), exp(1), exp(0); top-2 keeps sources 0 and 1 (equal weights), so
    # class 0 and class 1 get 1/2 each. The official threshold would keep all three tied sources:
    # class 0 1/3, class 1 2/3.
    target, sources, labels = _tied_case()
    out = propagate_frame(target, sources, labels, params=PropagationParams(topk=2, temperature=1.0), mask=None)
    torch.testing.assert_close(out, torch.tensor([[0.5], [0.5]]))
    # top-3: the three tied sources, 1/3 each; top-4 adds e2 with weight 1 / (3e + 1)
    out3 = propagate_frame(target, sources, labels, params=PropagationParams(topk=3, temperature=1.0), mask=None)
    torch.testing.assert_close(out3, torch.tensor([[1 / 3], [2 / 3]]))
    out4 = propagate_frame(target, sources, labels, params=PropagationParams(topk=4, temperature=1.0), mask=None)
    e = math.e
    torch.testing.assert_close(out4, torch.tensor([[(e + 1) / (3 * e + 1)], [2 * e / (3 * e + 1)]]))


def test_repeated_runs_and_chunk_sizes_agree_exactly() -> None:
    gen = torch.Generator().manual_seed(0)
    # one-hot features: every affinity is exp(0) or exp(1 / T) exactly, so ties are everywhere
    target = torch.eye(6)[torch.randint(0, 6, (20,), generator=gen)]
    sources = torch.eye(6)[torch.randint(0, 6, (3, 20), generator=gen)]
    labels = torch.rand(3, 4, 20, generator=gen)
    runs = [propagate_frame(target, sources, labels, params=PropagationParams(), mask=None) for _ in range(3)]
    assert all(torch.equal(runs[0], r) for r in runs[1:])
    # each source its own channel: the output is the weight matrix. Any chunk size keeps the same
    # sources; the column sums' rounding follows the block width (as the official single block's)
    identity = torch.eye(60).reshape(60, 3, 20).permute(1, 0, 2)
    weights = [propagate_frame(target, sources, identity, params=PropagationParams(chunk_size=c), mask=None)
               for c in (1024, 1, 7)]
    assert all(torch.equal(weights[0] > 0, w > 0) for w in weights[1:])
    assert all(torch.allclose(weights[0], w, rtol=2e-7, atol=0) for w in weights[1:])
    assert ((weights[0] > 0).sum(dim=0) == 5).all()


def test_permuting_targets_permutes_the_output() -> None:
    gen = torch.Generator().manual_seed(1)
    target = torch.eye(5)[torch.randint(0, 5, (15,), generator=gen)]
    sources = torch.eye(5)[torch.randint(0, 5, (2, 15), generator=gen)]
    labels = torch.rand(2, 3, 15, generator=gen)
    perm = torch.randperm(15, generator=gen)
    out = propagate_frame(target, sources, labels, params=PropagationParams(), mask=None)
    permuted = propagate_frame(target[perm], sources, labels, params=PropagationParams(), mask=None)
    assert torch.equal(permuted, out[:, perm])


def test_reordering_sources_follows_the_index_rule() -> None:
    target, sources, labels = _tied_case()
    params = PropagationParams(topk=2, temperature=1.0)
    # swapping the two class-1 tied sources changes nothing: the kept labels are the same
    same = propagate_frame(target, sources[:, [0, 2, 1, 3]], labels[:, :, [0, 2, 1, 3]], params=params, mask=None)
    torch.testing.assert_close(same, torch.tensor([[0.5], [0.5]]))
    # moving the class-0 tied source last among the ties: the first two tied sources are both class 1
    moved = propagate_frame(target, sources[:, [1, 2, 0, 3]], labels[:, :, [1, 2, 0, 3]], params=params, mask=None)
    torch.testing.assert_close(moved, torch.tensor([[0.0], [1.0]]))


def test_first_frame_wins_a_tie_with_the_queue() -> None:
    e1, e2 = torch.eye(2)
    target = e1[None]
    sources = torch.stack([torch.stack([e2, e1]), torch.stack([e1, e2])])  # frame 0: patch 1 = e1; frame 1: patch 0
    labels = torch.tensor([[[0.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [1.0, 0.0]]])  # class 0 from frame 0, 1 from 1
    out = propagate_frame(target, sources, labels, params=PropagationParams(topk=1, temperature=1.0), mask=None)
    torch.testing.assert_close(out, torch.tensor([[1.0], [0.0]]))
