"""The epoch plan: every kept sample read once, equal steps per rank, contiguous runs, (seed, epoch) order."""

from __future__ import annotations

from collections import Counter

import pytest

from dino_model.data.shard_plan import reader_segments, shard_order, steps_per_epoch, worker_steps


def _read(counts, **kw) -> list[tuple[int, int]]:
    """(shard, sample) pairs one reader reads, in order."""
    return [(s.shard, i) for s in reader_segments(counts, **kw) for i in range(s.start, s.stop)]


@pytest.mark.parametrize(("counts", "batch", "world", "workers"), [
    ([5] * 9 + [3], 4, 2, 2), ([7, 1, 13, 4, 9], 3, 2, 3), ([100], 8, 4, 5), ([2, 2, 2], 1, 3, 1), ([10, 10], 6, 1, 4),
])
def test_every_kept_sample_is_read_once_and_ranks_get_equal_steps(counts, batch, world, workers):
    steps = steps_per_epoch(sum(counts), batch, world)
    seen: Counter = Counter()
    for rank in range(world):
        per_rank = [_read(counts, seed=3, epoch=1, batch_size=batch, rank=rank, world_size=world, worker=w,
                          num_workers=workers) for w in range(workers)]
        assert [len(r) for r in per_rank] == [len(worker_steps(steps, w, workers)) * batch for w in range(workers)]
        assert sum(map(len, per_rank)) == steps * batch
        seen.update(pair for reader in per_rank for pair in reader)
    assert set(seen.values()) == {1} and len(seen) == steps * batch * world
    assert sum(counts) - len(seen) == sum(counts) % (batch * world)  # only the remainder is dropped


def test_a_reader_takes_contiguous_runs_each_read_front_to_back_and_marks_whole_shards():
    counts = [5] * 9 + [3]
    segments = reader_segments(counts, seed=0, epoch=4, batch_size=4, rank=0, world_size=2, worker=1, num_workers=2)
    order = shard_order(10, 0, 4)
    assert [s.shard for s in segments] == order[order.index(segments[0].shard):][:len(segments)]
    assert all(s.start == 0 for s in segments[1:]) and all(s.stop == s.count for s in segments[:-1])


def test_the_shard_order_depends_on_seed_and_epoch_only():
    assert shard_order(50, 1, 2) == shard_order(50, 1, 2) and sorted(shard_order(50, 1, 2)) == list(range(50))
    assert len({tuple(shard_order(50, seed, epoch)) for seed in (0, 1) for epoch in (0, 1, 2)}) == 6


def test_workers_split_steps_into_contiguous_runs_the_first_ones_one_longer():
    assert [list(worker_steps(7, w, 3)) for w in range(3)] == [[0, 1, 2], [3, 4], [5, 6]]
    assert [len(worker_steps(2, w, 4)) for w in range(4)] == [1, 1, 0, 0]
