"""Multi-crop forward: crops of one resolution go through the backbone together, the head once.

Official `utils.MultiCropWrapper`, but grouping consecutive crops by their full (H, W) rather than
by width alone. Output rows are crop-major: [crop 0 batch, crop 1 batch, ...].
"""

import torch
from torch import Tensor, nn


class MultiCropWrapper(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, crops: Tensor | list[Tensor]) -> Tensor:
        if isinstance(crops, Tensor):
            crops = [crops]
        feats = [self.backbone(torch.cat(group)) for group in group_by_resolution(crops)]
        return self.head(torch.cat(feats))


def group_by_resolution(crops: list[Tensor]) -> list[list[Tensor]]:
    """Split a list of (B, C, H, W) tensors into runs of consecutive equal (H, W)."""
    groups: list[list[Tensor]] = []
    for crop in crops:
        if groups and groups[-1][0].shape[-2:] == crop.shape[-2:]:
            groups[-1].append(crop)
        else:
            groups.append([crop])
    return groups
