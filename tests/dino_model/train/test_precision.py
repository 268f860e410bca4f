"""train.precision=auto: resolved once per run for its device, recorded, and kept by a resume."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch
import yaml

from dino_model.config import TrainConfig, load_config, resume_changes
from dino_model.errors import ConfigError
from dino_model.runtime.checkpoint import load_checkpoint
from dino_model.runtime.distributed import DistInfo
from dino_model.train import precision as precision_module
from dino_model.train.loop import _with_resolved_precision, fit
from dino_model.train.precision import resolve_precision

from .conftest import small_cfg

CUDA, CPU = torch.device("cuda", 0), torch.device("cpu")


@pytest.fixture
def gpu_bf16(monkeypatch: pytest.MonkeyPatch):
    """Pretend the current GPU has (True) or lacks (False) native bf16; records the calls' kwargs."""
    calls: list[dict] = []

    def set_native(native: bool) -> list[dict]:
        def fake(**kwargs):
            calls.append(kwargs)
            return native
        monkeypatch.setattr(precision_module.torch.cuda, "is_bf16_supported", fake)
        return calls
    return set_native


def test_auto_on_cuda_with_native_bf16_is_bf16(gpu_bf16) -> None:
    calls = gpu_bf16(True)
    assert resolve_precision("auto", CUDA) == "bf16"
    assert calls == [{"including_emulation": False}]  # emulated bf16 (pre-Ampere) does not count


def test_auto_on_cuda_without_bf16_is_the_official_fp16(gpu_bf16) -> None:
    gpu_bf16(False)
    assert resolve_precision("auto", CUDA) == "fp16"


def test_auto_on_cpu_is_fp32_without_asking_cuda(gpu_bf16) -> None:
    calls = gpu_bf16(True)
    assert resolve_precision("auto", CPU) == "fp32"
    assert calls == []


@pytest.mark.parametrize("explicit", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("native", [True, False])
def test_explicit_values_are_untouched(gpu_bf16, explicit: str, native: bool) -> None:
    gpu_bf16(native)
    assert resolve_precision(explicit, CUDA) == explicit
    assert resolve_precision(explicit, CPU) == explicit


def test_default_is_auto_and_values_are_checked() -> None:
    assert TrainConfig().train.precision == "auto"
    assert load_config(overrides=["train.precision=fp16"]).train.precision == "fp16"
    with pytest.raises(ConfigError, match="train.precision"):
        load_config(overrides=["train.precision=fp8"])


def test_the_trainer_resolves_auto_for_its_device(gpu_bf16) -> None:
    gpu_bf16(False)
    cfg = TrainConfig()
    resolved = _with_resolved_precision(cfg, DistInfo(rank=0, world_size=1, local_rank=0, device=CUDA))
    assert resolved.train.precision == "fp16" and cfg.train.precision == "auto"  # the caller's config is kept


def test_a_cpu_run_trains_in_fp32_records_it_and_resumes(small_digits, tmp_path, caplog) -> None:
    data, out = tmp_path / "data", tmp_path / "run"
    for class_dir in sorted(small_digits.iterdir())[:4]:  # 4 classes x 4 images: 2 steps of 8
        (data / class_dir.name).mkdir(parents=True)
        for png in sorted(class_dir.iterdir())[:4]:
            shutil.copy(png, data / class_dir.name / png.name)
    with caplog.at_level(logging.INFO, logger="dino_model.train.loop"):
        fit(small_cfg(data, out, "train.epochs=1"))
    assert "device cpu, precision fp32" in caplog.text  # the resolved value is logged
    state = load_checkpoint(out / "checkpoint.pth")
    assert state["config"]["train"]["precision"] == "fp32"
    assert not state["scaler"]  # no fp16 loss scaling on a CPU
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["precision"] == "fp32"
    # auto again: the resume's config check passes (a refused one raises ConfigError); nothing is left to train
    result = fit(small_cfg(data, out, "train.epochs=1"), resume=True)
    assert result.epochs_done == 1


def test_a_resume_compares_the_resolved_precision() -> None:
    saved = TrainConfig()
    saved.train.precision = "bf16"  # an auto run on a bf16 GPU, as its checkpoint records it
    here = TrainConfig()
    here.train.precision = "bf16"  # auto resolved on the same kind of GPU
    assert resume_changes(saved.to_dict(), here) == {}
    here.train.precision = "fp32"  # auto resolved on a CPU: a real change, refused unless allowed
    assert resume_changes(saved.to_dict(), here) == {"train.precision": ("bf16", "fp32")}
