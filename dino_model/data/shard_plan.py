"""Which samples of which shards each rank and DataLoader worker reads in an epoch.

Pure arithmetic on the shard counts, so it is the same in every process without communication.
The rule:

1. the shards are put in an order drawn from (seed, epoch) alone, and their samples laid end to
   end in that order (the epoch stream, N samples);
2. the stream is cut after steps x B x W samples, steps = N // (B x W) for batch B and world size W:
   the last N mod (B x W) samples are dropped, as DistributedSampler + drop_last would drop a
   remainder (which samples fall there changes with the shard order each epoch);
3. rank r takes the r-th of W equal contiguous stretches (steps x B samples: every rank the same
   number of steps), and its K DataLoader workers split that stretch into contiguous runs of whole
   batches (the first steps mod K workers one batch more), which DataLoader's round robin interleaves.

So across ranks and workers every kept sample is read exactly once per epoch, each reader reads
contiguous runs of shards front to back, and the plan depends on (seed, epoch, B, W, K) only.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Segment:
    shard: int  # position in the index's shard list
    start: int  # first sample taken, counted within the shard
    stop: int  # one past the last sample taken
    count: int  # samples the shard holds (stop == count: the segment reads the shard to its end)


def steps_per_epoch(total: int, batch_size: int, world_size: int) -> int:
    return total // (batch_size * world_size)


def shard_order(n_shards: int, seed: int, epoch: int) -> list[int]:
    """The epoch's shard order, drawn from (seed, epoch) alone."""
    order = list(range(n_shards))
    random.Random(f"dino-shards/{seed}/{epoch}").shuffle(order)
    return order


def worker_steps(steps: int, worker: int, num_workers: int) -> range:
    """The rank's steps that worker `worker` of `num_workers` produces: a contiguous run."""
    base, extra = divmod(steps, num_workers)
    start = worker * base + min(worker, extra)
    return range(start, start + base + (1 if worker < extra else 0))


def reader_segments(counts: list[int], *, seed: int, epoch: int, batch_size: int, rank: int, world_size: int,
                    worker: int = 0, num_workers: int = 1) -> list[Segment]:
    """The runs of samples that (rank, worker) reads this epoch, in reading order."""
    steps = steps_per_epoch(sum(counts), batch_size, world_size)
    mine = worker_steps(steps, worker, num_workers)
    lo = (rank * steps + mine.start) * batch_size
    hi = (rank * steps + mine.stop) * batch_size
    segments, offset = [], 0
    for shard in shard_order(len(counts), seed, epoch):
        begin, end = max(lo, offset), min(hi, offset + counts[shard])
        if begin < end:
            segments.append(Segment(shard, begin - offset, end - offset, counts[shard]))
        offset += counts[shard]
    return segments
