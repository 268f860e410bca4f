"""Per-frame patch features for label propagation: a frozen ViT's, or a colour oracle's.

DINO propagates with the last block's patch tokens after the final norm (`get_intermediate_layers(
x, n=1)[0]` without CLS), position embeddings interpolated to the frame's patch grid. The colour
oracle (mean normalised RGB of each patch) needs no model: on a sequence whose objects differ in
colour it isolates the propagation and scoring logic from the quality of a backbone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dino_model.models.backbone import intermediate_tokens, patch_grid

FeatureFn = Callable[[Tensor], Tensor]  # (B, 3, H, W) frames -> (B, h, w, D) patch features


def vit_patch_features(model: nn.Module) -> FeatureFn:
    """Last-block patch tokens (final norm applied) of a frozen ViT, as (B, h, w, D)."""
    model.eval()

    @torch.inference_mode()
    def features(frames: Tensor) -> Tensor:
        h, w = patch_grid(model, *frames.shape[-2:])
        tokens = intermediate_tokens(model, frames, 1)[0]
        patches = tokens[:, tokens.shape[1] - h * w :]
        return patches.reshape(frames.shape[0], h, w, -1).float()

    return features


def colour_features(patch_size: int) -> FeatureFn:
    """The oracle: mean normalised colour of each patch_size x patch_size patch, (B, h, w, 3)."""

    def features(frames: Tensor) -> Tensor:
        return F.avg_pool2d(frames, patch_size).permute(0, 2, 3, 1)

    return features


def stream_features(frames: Iterable[Tensor], feature_fn: FeatureFn, *, batch_size: int = 8,
                    device: torch.device | str = "cpu") -> Iterator[Tensor]:
    """Features (h, w, D) of each (1, 3, H, W) frame, computed `batch_size` frames per forward pass."""
    batch: list[Tensor] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == batch_size:
            yield from feature_fn(torch.cat(batch).to(device))
            batch = []
    if batch:
        yield from feature_fn(torch.cat(batch).to(device))
