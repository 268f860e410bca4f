"""Pretraining that starts from given weights (train.init_weights): a new run at epoch 0 with a fresh
optimiser and schedules, whose student and teacher start as the file's; distinct from --resume.

The initial weights are read where training really starts: a spy on `train_one_epoch` copies the
student and teacher the loop hands to epoch 0.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from fixtures.official_dino import network_state, official_full_checkpoint, official_head, official_vit, save

from dino_model.config import load_config, resume_changes
from dino_model.errors import CheckpointError, ConfigError
from dino_model.logs import read_jsonl
from dino_model.runtime.checkpoint import load_checkpoint
from dino_model.train import loop
from dino_model.train.loop import build_schedules, fit

from .conftest import small_cfg

TINY_VIT = {"patch_size": 4, "img_size": 32, "embed_dim": 64, "depth": 2, "num_heads": 2}  # the tiny config's
ARGS = {"arch": "vit_tiny", "patch_size": 4, "out_dim": 128, "norm_last_layer": True, "use_bn_in_head": False}
WN_NAMES = {"head.last_layer.weight_g": "head.last_layer.parametrizations.weight.original0",
            "head.last_layer.weight_v": "head.last_layer.parametrizations.weight.original1"}


def _network(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    mlp, last = official_head(64, 128, hidden_dim=128, bottleneck_dim=32)  # small_cfg: out_dim 128
    return network_state(official_vit(**TINY_VIT), mlp, last)


def _project_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {WN_NAMES.get(k.removeprefix("module."), k.removeprefix("module.")): v for k, v in state.items()}


@pytest.fixture(scope="module")
def few_digits(small_digits: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two images per class: two steps of batch 8 per epoch."""
    root = tmp_path_factory.mktemp("few_digits")
    for class_dir in sorted(d for d in small_digits.iterdir() if d.name.isdigit()):
        (root / class_dir.name).mkdir()
        for png in sorted(class_dir.iterdir())[:2]:
            shutil.copy(png, root / class_dir.name / png.name)
    return root


@pytest.fixture(scope="module")
def official_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("official")
    student, teacher = _network(11), _network(12)
    backbone = {k.removeprefix("backbone."): v for k, v in teacher.items() if k.startswith("backbone.")}
    return {"full": save(official_full_checkpoint(student, teacher, epoch=100, **ARGS), root / "checkpoint.pth"),
            "backbone": save(backbone, root / "dino_tiny_pretrain.pth")}


@pytest.fixture
def epoch_start(monkeypatch: pytest.MonkeyPatch) -> dict[int, dict]:
    """{epoch: {student, teacher, optimizer_state_entries}} as each epoch of `fit` begins."""
    seen: dict[int, dict] = {}
    real = loop.train_one_epoch

    def spy(t, loader, epoch, ckpt_path):
        seen[epoch] = {"student": {k: v.clone() for k, v in t.student_module.state_dict().items()},
                       "teacher": {k: v.clone() for k, v in t.teacher_module.state_dict().items()},
                       "optimizer_state_entries": len(t.optimizer.state)}
        return real(t, loader, epoch, ckpt_path)

    monkeypatch.setattr(loop, "train_one_epoch", spy)
    return seen


def _assert_equal(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, rtol=0, atol=0, msg=key)


def test_training_starts_from_an_official_full_checkpoint(few_digits: Path, tmp_path: Path,
                                                          official_files: dict[str, Path],
                                                          epoch_start: dict[int, dict]) -> None:
    path = official_files["full"]
    cfg = small_cfg(few_digits, tmp_path / "run", f"train.init_weights={path}")
    result = fit(cfg)
    raw = torch.load(path, weights_only=False)
    assert sorted(epoch_start) == [0]  # a new run: epoch 0 only, not the file's epoch 100
    _assert_equal(epoch_start[0]["student"], _project_names(raw["student"]))
    _assert_equal(epoch_start[0]["teacher"], _project_names(raw["teacher"]))
    assert epoch_start[0]["optimizer_state_entries"] == 0  # a fresh optimiser

    (record,) = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert record["epoch"] == 0 and torch.isfinite(torch.tensor(record["loss"]))
    schedules = build_schedules(cfg, record["steps"], world_size=1)
    assert record["lr"] == pytest.approx(float(schedules.lr[record["steps"] - 1]))  # schedules from their start
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt["epoch"] == 1 and ckpt["config"]["train"]["init_weights"] == str(path)
    assert ckpt["init"]["format"] == "official" and ckpt["init"]["parts"] == "all"
    assert ckpt["init"]["source_epoch"] == 100 and result.lineage["init_sha256"] == ckpt["init"]["sha256"]
    qkv = "backbone.blocks.0.attn.qkv.weight"
    assert (ckpt["student"][qkv] - epoch_start[0]["student"][qkv]).abs().max() > 0  # and it trained


def test_pretrain_command_starts_from_a_backbone_only_file(run_cli, few_digits: Path, tmp_path: Path,
                                                           official_files: dict[str, Path],
                                                           epoch_start: dict[int, dict]) -> None:
    path = official_files["backbone"]
    code = run_cli(["pretrain", "--config", "tiny", f"data.root={few_digits}", f"train.output_dir={tmp_path / 'run'}",
                    "model.out_dim=128", "train.batch_size=8", f"train.init_weights={path}"])
    assert code == 0
    plain = torch.load(path, weights_only=True)
    for model in ("student", "teacher"):
        start = epoch_start[0][model]
        _assert_equal({k.removeprefix("backbone."): v for k, v in start.items() if k.startswith("backbone.")}, plain)
    heads = [{k: v for k, v in epoch_start[0][m].items() if k.startswith("head.")} for m in ("student", "teacher")]
    _assert_equal(heads[1], heads[0])  # fresh heads, the teacher's a copy of the student's
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pth")["init"]["parts"] == "backbone"


def test_a_mismatched_file_stops_the_run_before_training(few_digits: Path, tmp_path: Path,
                                                         official_files: dict[str, Path],
                                                         epoch_start: dict[int, dict]) -> None:
    cfg = small_cfg(few_digits, tmp_path / "run", f"train.init_weights={official_files['full']}", "model.out_dim=64")
    with pytest.raises(CheckpointError, match=r"out_dim 128; this run has model.out_dim=64"):
        fit(cfg)
    assert not epoch_start and not (tmp_path / "run" / "checkpoint.pth").exists()


def test_resume_ignores_init_weights_and_keeps_the_record(few_digits: Path, tmp_path: Path,
                                                          official_files: dict[str, Path],
                                                          epoch_start: dict[int, dict]) -> None:
    out = tmp_path / "run"
    path = official_files["backbone"]
    fit(small_cfg(few_digits, out, f"train.init_weights={path}", "train.epochs=2", "train.stop_after_epochs=1"))
    after_first = load_checkpoint(out / "checkpoint.pth")
    shutil.copy(out / "checkpoint.pth", tmp_path / "epoch1.pth")
    # resumed without the key (as `--resume` usually is): no refusal, the weights come from the checkpoint
    fit(small_cfg(few_digits, out, "train.epochs=2"), resume=True)
    _assert_equal(epoch_start[1]["student"], after_first["student"])
    resumed = load_checkpoint(out / "checkpoint.pth")
    assert resumed["epoch"] == 2 and resumed["config"]["train"]["init_weights"] == str(path)
    assert resumed["init"] == after_first["init"]
    assert f"init_weights: {path}" in (out / "config.yaml").read_text()


def test_init_keys_are_validated_and_never_block_a_resume() -> None:
    with pytest.raises(ConfigError, match=r"train.init_parts='head' is not one of auto, all, backbone"):
        load_config("tiny", overrides=["train.init_parts=head"])
    saved = load_config("tiny", overrides=["train.init_weights=/w/a.pth", "train.init_parts=backbone"]).to_dict()
    assert resume_changes(saved, load_config("tiny")) == {}
    assert resume_changes(saved, load_config("tiny", overrides=["train.epochs=2"])) == {"train.epochs": (1, 2)}


def test_training_starts_from_the_safetensors_weights_an_export_serves(few_digits: Path, tmp_path: Path,
                                                                       official_files: dict[str, Path],
                                                                       epoch_start: dict[int, dict]) -> None:
    """The flywheel's retraining starts from the served version's backbone.safetensors (fresh heads)."""
    from safetensors.torch import save_file

    plain = torch.load(official_files["backbone"], weights_only=True)
    path = tmp_path / "served" / "backbone.safetensors"
    path.parent.mkdir()
    save_file({k: v.contiguous() for k, v in plain.items()}, str(path))
    result = fit(small_cfg(few_digits, tmp_path / "run", f"train.init_weights={path}"))
    start = epoch_start[0]["teacher"]
    _assert_equal({k.removeprefix("backbone."): v for k, v in start.items() if k.startswith("backbone.")}, plain)
    init = load_checkpoint(result.checkpoint)["init"]
    assert init["parts"] == "backbone" and result.lineage["init_weights"] == str(path.resolve())
    with pytest.raises(CheckpointError, match="does not exist"):
        fit(small_cfg(few_digits, tmp_path / "again", f"train.init_weights={tmp_path / 'gone.safetensors'}"))
