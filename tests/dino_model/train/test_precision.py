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
from dino_model.train.precision import auto_precision, has_bf16_units, read_cpu_flags, resolve_precision

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


def test_auto_on_cpu_follows_its_bf16_units_without_asking_cuda(gpu_bf16, monkeypatch) -> None:
    calls = gpu_bf16(True)
    monkeypatch.setenv("DINO_CPU_BF16", "0")  # as tests/conftest.py pins it
    assert resolve_precision("auto", CPU) == "fp32"
    monkeypatch.setenv("DINO_CPU_BF16", "1")
    assert resolve_precision("auto", CPU) == "bf16"
    assert calls == []


@pytest.mark.parametrize(("device", "cuda_native", "cpu_units", "expected"), [
    ("cuda", True, False, "bf16"), ("cuda", False, True, "fp16"),  # a GPU: the CPU does not matter
    ("cpu", False, True, "bf16"), ("cpu", False, False, "fp32"),
    ("cpu", True, False, "fp32"),  # a bf16 GPU in the machine does not make its CPU fast in bf16
    ("mps", False, True, "fp32")])
def test_auto_precision_decision(device: str, cuda_native: bool, cpu_units: bool, expected: str) -> None:
    assert auto_precision(device, cuda_native_bf16=cuda_native, cpu_bf16_units=cpu_units) == expected


@pytest.mark.parametrize(("flags", "native"), [
    ("fpu avx2 avx512f avx512_bf16 avx512_vnni", True),  # AMD Zen 4, Intel Cooper Lake
    ("avx512f amx_bf16 amx_tile amx_int8", True),  # Intel Sapphire Rapids
    ("fpu avx2 avx512f avx512_vnni", False),  # Ice Lake, Zen 3-: bf16 emulated
    ("", False)])
def test_cpu_bf16_units_from_flags(flags: str, native: bool) -> None:
    assert has_bf16_units(flags.split()) is native


def test_cpu_flags_from_cpuinfo(tmp_path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx512f avx512_bf16\n\n"
                       "processor\t: 1\nflags\t\t: fpu avx512f avx512_bf16\n")
    assert read_cpu_flags(cpuinfo) == {"fpu", "avx512f", "avx512_bf16"}
    assert read_cpu_flags(tmp_path / "absent") == frozenset()  # not Linux: no flags, fp32


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


def test_a_cpu_run_without_bf16_units_trains_in_fp32_records_it_and_resumes(small_digits, tmp_path, caplog) -> None:
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


def test_a_run_on_a_cpu_with_bf16_units_trains_in_bf16(small_digits, tmp_path, caplog, monkeypatch) -> None:
    monkeypatch.setenv("DINO_CPU_BF16", "1")
    data, out = tmp_path / "data", tmp_path / "run"
    for class_dir in sorted(small_digits.iterdir())[:2]:  # 2 classes x 4 images: 1 step of 8
        (data / class_dir.name).mkdir(parents=True)
        for png in sorted(class_dir.iterdir())[:4]:
            shutil.copy(png, data / class_dir.name / png.name)
    with caplog.at_level(logging.INFO, logger="dino_model.train.loop"):
        fit(small_cfg(data, out, "train.epochs=1"))
    assert "device cpu, precision bf16" in caplog.text
    assert load_checkpoint(out / "checkpoint.pth")["config"]["train"]["precision"] == "bf16"


def test_a_resume_compares_the_resolved_precision() -> None:
    saved = TrainConfig()
    saved.train.precision = "bf16"  # an auto run on a bf16 GPU, as its checkpoint records it
    here = TrainConfig()
    here.train.precision = "bf16"  # auto resolved on the same kind of GPU
    assert resume_changes(saved.to_dict(), here) == {}
    here.train.precision = "fp32"  # auto resolved on a CPU: a real change, refused unless allowed
    assert resume_changes(saved.to_dict(), here) == {"train.precision": ("bf16", "fp32")}
