"""Multi-crop wrapper: one backbone pass per resolution group, crop-major output order."""

import torch
from torch import nn

from dino_model.models.multicrop import MultiCropWrapper, group_by_resolution


class CountingBackbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        return x.mean(dim=(2, 3))


def test_groups_by_full_resolution_and_keeps_order():
    crops = [torch.full((2, 3, 8, 8), float(i)) for i in range(2)] + [
        torch.full((2, 3, 4, 4), float(i + 2)) for i in range(3)
    ]
    backbone = CountingBackbone()
    out = MultiCropWrapper(backbone, nn.Identity())(crops)
    assert backbone.calls == [(4, 3, 8, 8), (6, 3, 4, 4)]
    assert out.shape == (10, 3)
    torch.testing.assert_close(out[:, 0], torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4], dtype=torch.float))


def test_same_width_different_height_is_a_separate_group():
    groups = group_by_resolution([torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 6, 8)])
    assert len(groups) == 2
