"""Semi-supervised label propagation through a video with frozen patch features.

The protocol of DINO's DAVIS evaluation (Caron et al., ICCV 2021, Sec. 4.2.2), after Jabri et al.
2020 (App. F): a target frame's labels are a weighted vote of source patches from the first frame
(one-hot ground truth) and a queue of the last n propagated frames (their *soft* labels). Weights
are exp(cos(f_target, f_source) / T) with T = 0.1, restricted to sources within a square spatial
neighbourhood, keeping only the top k sources over all context frames jointly, then normalised to
sum 1. The official 4-deep loop building the neighbourhood is a broadcast comparison here, and
targets are processed in chunks so the affinity block stays (context x chunk x hw).

The arithmetic is the official `label_propagation`'s, operation for operation and layout for
layout (features normalised where used, the queue holding raw ones; `bmm` of the repeated target
with (context, D, hw) sources; column sums; `mm` with the transposed labels): with nearly constant
features many affinities are within a rounding of each other, and an `einsum`, which rounds
differently, ranked near-tied sources differently on most frames of a real DAVIS sequence. A
frame within one chunk is the official computation; smaller chunks can round the column sums
differently in the last bit (the reduction order follows the block width), never the selection.

Ties are broken deterministically, by source index. The official code keeps every source whose
affinity is at least the k-th largest, so affinities equal at the k-th place keep more than k
sources, a set that changes with the last bit of rounding. Here exactly k sources are kept: all
above the k-th largest value, then those equal to it in source order, lower index first. Sources
are ordered by context frame (the first frame, then the queue from oldest to newest) and, within a
frame, in raster order: among exact ties the first frame's, then the older frames', then the
upper-left patches win. Without a tie at the k-th place the selection is the official one. Values
that differ, however slightly, are ranked by value, as there, so the rounding of the affinities
(device) can still decide between two nearly equal sources.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from dino_model.eval.davis.config import PropagationParams


def neighbourhood_mask(height: int, width: int, radius: int, *, device: torch.device | str = "cpu") -> Tensor:
    """(hw, hw) bool: source j lies within `radius` patches of target i in both rows and columns."""
    rows = torch.arange(height, device=device).repeat_interleave(width)
    cols = torch.arange(width, device=device).repeat(height)
    near_rows = (rows[:, None] - rows[None, :]).abs() <= radius
    near_cols = (cols[:, None] - cols[None, :]).abs() <= radius
    return near_rows & near_cols


def propagate_frame(
    target: Tensor,
    sources: Tensor,
    source_labels: Tensor,
    *,
    params: PropagationParams,
    mask: Tensor | None = None,
) -> Tensor:
    """Labels of one target frame from its context frames, in the official order of operations.

    As the official `label_propagation`: the target (hw, D) is L2-normalised along D, the sources
    are laid out (n_ctx, D, hw) and normalised along D, the affinity is one `bmm` of the target
    repeated per context frame with the sources, then exp(. / T), the neighbourhood multiplied in,
    the (n_ctx * hw, targets) transpose, top-k, division by the column sums and one `mm` with the
    (C, n_ctx * hw) labels. Only the tie rule of `top_k_sources` and the chunking of targets differ.

    Args:
        target: target features, (hw, D); raw or normalised (normalised here).
        sources: context features, (n_ctx, hw, D); raw or normalised (normalised here).
        source_labels: context labels, (n_ctx, C, hw) (one-hot for the first frame, soft otherwise).
        params: neighbourhood, top-k, temperature and chunk size.
        mask: (hw, hw) bool neighbourhood (target, source), or None for no restriction.

    Returns:
        Soft labels (C, hw); each column sums to 1 over its kept sources.
    """
    n_ctx, hw, _ = sources.shape
    n_classes = source_labels.shape[1]
    target = F.normalize(target, dim=1, p=2)
    sources = F.normalize(sources.transpose(1, 2).contiguous(), dim=1, p=2)  # (n_ctx, D, hw)
    flat_labels = source_labels.transpose(2, 1).reshape(-1, n_classes).T  # (C, n_ctx * hw), a transposed view
    k = min(params.topk, n_ctx * hw)
    out = torch.empty(n_classes, target.shape[0], dtype=source_labels.dtype, device=target.device)
    for start in range(0, target.shape[0], params.chunk_size):
        stop = min(start + params.chunk_size, target.shape[0])
        queries = target[start:stop].unsqueeze(0).repeat(n_ctx, 1, 1)  # (n_ctx, chunk, D)
        aff = torch.exp(torch.bmm(queries, sources) / params.temperature)  # (n_ctx, chunk, hw)
        if mask is not None:
            aff *= mask[start:stop]
        # (n_ctx * hw sources, chunk targets); top-k jointly over every context frame
        aff = aff.transpose(2, 1).reshape(-1, stop - start)
        aff[~top_k_sources(aff, k)] = 0
        aff = aff / torch.sum(aff, dim=0, keepdim=True)
        out[:, start:stop] = torch.mm(flat_labels, aff)
    return out


def top_k_sources(aff: Tensor, k: int) -> Tensor:
    """(sources, targets) bool: per target column, exactly k sources by (affinity descending, index).

    Every source above the k-th largest value is kept, then sources equal to it in index order
    until k are kept: a stable selection, the same whichever source `topk` happened to return.
    The official selection (every value >= the k-th largest) is computed first; only the columns
    where it keeps more than k, a tie at the k-th place, are recomputed with the index rule.
    """
    kth = aff.topk(k, dim=0).values[-1:]  # (1, targets): the k-th largest value, unique per column
    keep = aff >= kth
    tied_cols = (keep.sum(dim=0) > k).nonzero().flatten()
    if tied_cols.numel():
        sub, sub_kth = aff[:, tied_cols], kth[:, tied_cols]
        above, tied = sub > sub_kth, sub == sub_kth
        room = k - above.sum(dim=0, keepdim=True)  # how many tied sources still fit
        keep[:, tied_cols] = above | (tied & (tied.cumsum(dim=0) <= room))
    return keep


def propagate_video(
    features: Iterable[Tensor],
    first_labels: Tensor,
    *,
    params: PropagationParams,
) -> Iterator[Tensor]:
    """Soft labels (C, h, w) for every frame after the first.

    Args:
        features: per-frame patch features (h, w, D), the first frame first (consumed lazily).
        first_labels: one-hot labels of the first frame at the patch grid, (C, h, w).
        params: propagation settings.

    Yields:
        Soft labels (C, h, w) of frames 1, 2, ... in order.
    """
    frames = iter(features)
    first = next(frames)
    h, w, _ = first.shape
    if first_labels.shape[-2:] != (h, w):
        raise ValueError(f"first labels {tuple(first_labels.shape)} do not match the patch grid {(h, w)}")
    device = first.device
    mask = neighbourhood_mask(h, w, params.neighbourhood, device=device) if params.neighbourhood > 0 else None
    n_classes = first_labels.shape[0]
    # raw features, normalised where they are used, as the official queue holds them
    first_feat = first.reshape(h * w, -1).float()
    first_lab = first_labels.reshape(n_classes, h * w).float().to(device)
    queue: deque[tuple[Tensor, Tensor]] = deque(maxlen=params.n_last_frames)
    for feat in frames:
        if feat.shape[:2] != (h, w):
            raise ValueError(f"frame features {tuple(feat.shape)} changed grid from {(h, w)}")
        target = feat.reshape(h * w, -1).float()
        sources = torch.stack([first_feat, *(f for f, _ in queue)])
        labels = torch.stack([first_lab, *(lab for _, lab in queue)])
        soft = propagate_frame(target, sources, labels, params=params, mask=mask)
        if params.n_last_frames > 0:
            queue.append((target, soft))
        yield soft.reshape(n_classes, h, w)
