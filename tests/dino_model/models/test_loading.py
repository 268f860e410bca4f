"""Official DINO checkpoints (full and backbone-only) load into the project's backbone and head.

The files are built here in the official format: `module.`-prefixed student keys, a pickled
argparse.Namespace, and the legacy weight-norm names `weight_g` / `weight_v`.
"""

import argparse

import pytest
import timm
import torch
import torch.nn.functional as F

from dino_model.errors import CheckpointError
from dino_model.models.loading import load_backbone, load_student_teacher


def _official_head(in_dim, out_dim):
    """The official DINOHead structure with the legacy weight_norm (independent of the project's)."""
    mlp = torch.nn.Sequential(torch.nn.Linear(in_dim, 2048), torch.nn.GELU(), torch.nn.Linear(2048, 2048),
                              torch.nn.GELU(), torch.nn.Linear(2048, 256))
    with pytest.warns(FutureWarning):
        last = torch.nn.utils.weight_norm(torch.nn.Linear(256, out_dim, bias=False))
    last.weight_g.data.fill_(1.0)
    return mlp, last


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    torch.manual_seed(0)
    vit = timm.create_model("vit_small_patch16_224", num_classes=0)
    mlp, last = _official_head(384, 256)
    head = {f"head.mlp.{k}": v for k, v in mlp.state_dict().items()}
    head |= {f"head.last_layer.{k}": v for k, v in last.state_dict().items()}
    teacher = {f"backbone.{k}": v for k, v in vit.state_dict().items()} | head
    args = argparse.Namespace(arch="vit_small", patch_size=16, out_dim=256, norm_last_layer=True, use_bn_in_head=False)
    root = tmp_path_factory.mktemp("official")
    full = {"student": {f"module.{k}": v for k, v in teacher.items()}, "teacher": teacher, "epoch": 100,
            "args": args, "optimizer": {}}
    torch.save(full, root / "checkpoint.pth")
    torch.save(vit.state_dict(), root / "dino_deitsmall16_pretrain.pth")
    return root, vit.eval(), mlp, last


def test_full_checkpoint_gives_the_same_teacher_outputs(official):
    root, vit, mlp, last = official
    _, teacher, cfg = load_student_teacher(root / "checkpoint.pth")
    assert (cfg.arch, cfg.patch_size, cfg.out_dim) == ("vit_small", 16, 256)
    x = torch.randn(2, 3, 224, 224)
    teacher.eval()
    with torch.no_grad():
        feats = vit(x)
        expected = last(F.normalize(mlp(feats), dim=-1))
        torch.testing.assert_close(teacher.backbone(x), feats, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(teacher([x]), expected, atol=1e-5, rtol=1e-5)


def test_backbone_only_file_infers_the_arch(official):
    root, vit, _, _ = official
    backbone, cfg = load_backbone(root / "dino_deitsmall16_pretrain.pth")
    assert (cfg.arch, cfg.patch_size, cfg.img_size) == ("vit_small", 16, 224)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), vit(x), atol=1e-5, rtol=1e-5)


def test_teacher_key_of_full_checkpoint_loads_as_backbone(official):
    root, vit, _, _ = official
    backbone, _ = load_backbone(root / "checkpoint.pth", key="teacher")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), vit(x), atol=1e-5, rtol=1e-5)


def test_bad_files_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_backbone(tmp_path / "none.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_backbone(tmp_path / "junk.pth")
    torch.save({"w": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="neither a ViT nor a ResNet"):
        load_backbone(tmp_path / "other.pth")
