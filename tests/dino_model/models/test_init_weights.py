"""Initialising a new run's student and teacher from a checkpoint: official full files, this project's
full checkpoints and backbone-only state dicts, and the mismatches that must be refused.

The official files are built in the test (tests/fixtures/official_dino.py) from timm's ViT and the
official head structure, and the expected weights are derived from them by the key mapping written
out here, not by the code under test.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from fixtures.official_dino import network_state, official_full_checkpoint, official_head, official_vit, save

from dino_model.config import load_config
from dino_model.errors import CheckpointError
from dino_model.models.factory import build_student_teacher
from dino_model.models.loading import init_student_teacher

TINY_VIT = {"patch_size": 4, "img_size": 32, "embed_dim": 64, "depth": 2, "num_heads": 2}
OUT_DIM = 96
ARGS = {"arch": "vit_tiny", "patch_size": 4, "out_dim": OUT_DIM, "norm_last_layer": True, "use_bn_in_head": False}


def _model_cfg(*overrides: str):
    return load_config("tiny", overrides=[f"model.out_dim={OUT_DIM}", *overrides]).model


def _network(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    mlp, last = official_head(64, OUT_DIM, hidden_dim=128, bottleneck_dim=32)
    return network_state(official_vit(**TINY_VIT), mlp, last)


def _expected(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official names as the project's head spells them (weight-norm parametrisation)."""
    names = {"head.last_layer.weight_g": "head.last_layer.parametrizations.weight.original0",
             "head.last_layer.weight_v": "head.last_layer.parametrizations.weight.original1"}
    return {names.get(k.removeprefix("module."), k.removeprefix("module.")): v for k, v in state.items()}


def _assert_state_equal(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, rtol=0, atol=0, msg=key)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("init")
    student, teacher = _network(1), _network(2)  # different, so a swap would show
    full = official_full_checkpoint(student, teacher, epoch=100, **ARGS)
    backbone = {k.removeprefix("backbone."): v for k, v in teacher.items() if k.startswith("backbone.")}
    return {"full": save(full, root / "checkpoint.pth"), "backbone": save(backbone, root / "dino_tiny_pretrain.pth")}


def test_official_full_checkpoint_sets_student_and_teacher(files: dict[str, Path]) -> None:
    student, teacher = build_student_teacher(_model_cfg())
    record = init_student_teacher(files["full"], student, teacher, _model_cfg())
    raw = torch.load(files["full"], weights_only=False)
    _assert_state_equal(student.state_dict(), _expected(raw["student"]))
    _assert_state_equal(teacher.state_dict(), _expected(raw["teacher"]))
    assert record == {"path": str(files["full"].resolve()), "parts": "all", "format": "official", "source_epoch": 100,
                      "sha256": hashlib.sha256(files["full"].read_bytes()).hexdigest()}
    assert not any(p.requires_grad for p in teacher.parameters())  # still a gradient-free teacher


def test_backbone_only_file_sets_both_backbones_and_keeps_fresh_heads(files: dict[str, Path]) -> None:
    student, teacher = build_student_teacher(_model_cfg())
    fresh_head = {k: v.clone() for k, v in student.head.state_dict().items()}
    record = init_student_teacher(files["backbone"], student, teacher, _model_cfg())
    plain = torch.load(files["backbone"], weights_only=True)
    _assert_state_equal(student.backbone.state_dict(), plain)
    _assert_state_equal(teacher.backbone.state_dict(), plain)
    _assert_state_equal(student.head.state_dict(), fresh_head)
    _assert_state_equal(teacher.head.state_dict(), fresh_head)  # the teacher starts as the student
    assert (record["parts"], record["format"]) == ("backbone", "state_dict") and "source_epoch" not in record


def test_backbone_part_of_a_full_checkpoint_is_its_teacher(files: dict[str, Path]) -> None:
    student, teacher = build_student_teacher(_model_cfg("model.out_dim=32"))  # another head: only the backbone fits
    init_student_teacher(files["full"], student, teacher, _model_cfg("model.out_dim=32"), parts="backbone")
    raw = torch.load(files["full"], weights_only=False)["teacher"]
    expected = {k.removeprefix("backbone."): v for k, v in raw.items() if k.startswith("backbone.")}
    _assert_state_equal(student.backbone.state_dict(), expected)
    _assert_state_equal(teacher.backbone.state_dict(), expected)


def test_project_full_checkpoint_round_trips(tmp_path: Path) -> None:
    cfg = load_config("tiny")
    torch.manual_seed(3)
    source_student, source_teacher = build_student_teacher(cfg.model)
    path = save({"student": source_student.state_dict(), "teacher": source_teacher.state_dict(), "epoch": 7,
                 "config": cfg.to_dict(), "data_version": "d41d8cd9"}, tmp_path / "checkpoint.pth")
    torch.manual_seed(4)
    student, teacher = build_student_teacher(cfg.model)
    record = init_student_teacher(path, student, teacher, cfg.model)
    _assert_state_equal(student.state_dict(), source_student.state_dict())
    _assert_state_equal(teacher.state_dict(), source_teacher.state_dict())
    assert (record["format"], record["source_epoch"], record["source_data_version"]) == ("project", 7, "d41d8cd9")


@pytest.mark.parametrize(("file", "overrides", "parts", "message"), [
    ("full", ["model.patch_size=8"], "auto", r"patch size 4; this run has model.patch_size=8"),
    ("full", ["model.embed_dim=32"], "auto", r"width \(embed dim\) 64; this run's model has 32"),
    ("full", ["model.depth=3"], "auto", r"has 2 blocks; this run's model has 3"),
    ("full", ["model.out_dim=128"], "auto", r"out_dim 96; this run has model.out_dim=128"),
    ("full", ["model.arch=vit_small", "model.embed_dim=64"], "auto",
     r"model.arch=vit_tiny\); this run has model.arch=vit_small"),
    ("full", ["model.hidden_dim=64"], "auto", r"does not fit .*head.mlp.0.weight \(128, 64\) vs \(64, 64\)"),
    ("backbone", [], "all", r"init_parts=all needs a full checkpoint"),
    ("backbone", ["model.arch=resnet18"], "auto", r"no ResNet weights .*model.arch=resnet18"),
    ("backbone", ["model.embed_dim=128"], "auto", r"width \(embed dim\) 64; this run's model has 128"),
])
def test_mismatches_are_refused_naming_both_values(files: dict[str, Path], file: str, overrides: list[str],
                                                   parts: str, message: str) -> None:
    cfg = _model_cfg(*overrides)
    student, teacher = build_student_teacher(cfg)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    with pytest.raises(CheckpointError, match=message):
        init_student_teacher(files[file], student, teacher, cfg, parts=parts)
    _assert_state_equal(student.state_dict(), before)  # refused before a weight was copied


@pytest.mark.parametrize("interpolation", ["dino", "timm"])
def test_position_table_of_another_size_is_resampled(files: dict[str, Path], interpolation: str) -> None:
    cfg = _model_cfg("model.img_size=64", f"model.pos_interpolation={interpolation}")  # 16 x 16 patches, file 8 x 8
    student, teacher = build_student_teacher(cfg)
    init_student_teacher(files["backbone"], student, teacher, cfg)
    table = torch.load(files["backbone"], weights_only=True)["pos_embed"]
    grid = table[:, 1:].reshape(1, 8, 8, 64).permute(0, 3, 1, 2)
    if interpolation == "dino":  # the official interpolation: scale factor (n + 0.1) / sqrt(N), no antialias
        grid = F.interpolate(grid, scale_factor=(16.1 / 8, 16.1 / 8), mode="bicubic", align_corners=False)
    else:
        grid = F.interpolate(grid, size=(16, 16), mode="bicubic", align_corners=False, antialias=True)
    expected = torch.cat([table[:, :1], grid.permute(0, 2, 3, 1).reshape(1, 256, 64)], dim=1)
    for model in (student, teacher):
        torch.testing.assert_close(model.backbone.pos_embed.detach(), expected, rtol=1e-5, atol=1e-6)
