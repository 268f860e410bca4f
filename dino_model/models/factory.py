"""Student and teacher networks: backbone + DINO head in a multi-crop wrapper.

The teacher is built without drop path and starts as a copy of the student, as officially.
"""

from __future__ import annotations

from torch import nn

from dino_model.config import ModelConfig
from dino_model.models.backbone import build_backbone
from dino_model.models.head import DINOHead
from dino_model.models.multicrop import MultiCropWrapper
from dino_model.models.teacher import make_teacher


def build_head(cfg: ModelConfig, in_dim: int, *, norm_last_layer: bool) -> DINOHead:
    return DINOHead(
        in_dim,
        cfg.out_dim,
        use_bn=cfg.use_bn_in_head,
        norm_last_layer=norm_last_layer,
        nlayers=cfg.head_layers,
        hidden_dim=cfg.hidden_dim,
        bottleneck_dim=cfg.bottleneck_dim,
    )


def build_student_teacher(cfg: ModelConfig) -> tuple[MultiCropWrapper, MultiCropWrapper]:
    backbone, dim = build_backbone(cfg)
    student = MultiCropWrapper(backbone, build_head(cfg, dim, norm_last_layer=cfg.norm_last_layer))
    t_backbone, _ = build_backbone(cfg, drop_path_rate=0.0)
    teacher = MultiCropWrapper(t_backbone, build_head(cfg, dim, norm_last_layer=True))
    return student, make_teacher(student, teacher)


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
