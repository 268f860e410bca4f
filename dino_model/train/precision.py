"""Which arithmetic a training run uses, decided once per run from `train.precision` and the device.

The official code trains in fp16 with a gradient scaler on GPUs by default (`use_fp16=True`). The
default here, `auto`, keeps mixed precision on GPUs but prefers bf16 where the GPU has it natively
(compute capability 8.0 and later, or ROCm): bf16 has fp32's exponent range, so it needs no loss
scaling and cannot overflow where fp16 would. Older GPUs get the official fp16 with the scaler.

On a CPU, `auto` is bf16 where the processor has bf16 units (the AVX512-BF16 or AMX-BF16 flags):
there a bf16 autocast step of the vit_tiny/4 benchmark takes about half the fp32 step, and the
demo learns as well in bf16 (k-NN top-1 61.4% against 59.7%; docs/training.md, "Precision and
devices"). Elsewhere CPU bf16 is emulated and far slower
than fp32, so `auto` is fp32. torch's `get_cpu_capability()` says only "AVX512", not whether the
bf16 instructions are there, so the flags come from /proc/cpuinfo (none elsewhere: fp32);
DINO_CPU_BF16=1 or 0 overrides the detection (the test suite pins 0, so that it trains in fp32 on
every CPU). Explicit values (`fp32`, `bf16`, `fp16`) are used as given.

The choice is a pure function of what was detected (`auto_precision`), so it is tested for every
kind of device without that device.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from pathlib import Path

import torch

AUTO = "auto"
COMPUTE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # /proc/cpuinfo names of native bf16 arithmetic
CPU_BF16_ENV = "DINO_CPU_BF16"  # 1 / 0: take the CPU as having / lacking bf16 units (the tests pin 0)


def auto_precision(device_type: str, *, cuda_native_bf16: bool = False, cpu_bf16_units: bool = False) -> str:
    """What `auto` becomes: on CUDA bf16 if native else fp16; on a CPU bf16 if it has bf16 units, else fp32."""
    if device_type == "cuda":
        return "bf16" if cuda_native_bf16 else "fp16"
    return "bf16" if device_type == "cpu" and cpu_bf16_units else "fp32"


def has_bf16_units(cpu_flags: Iterable[str]) -> bool:
    """Whether a CPU with these /proc/cpuinfo flags computes bf16 natively (AVX512-BF16 or AMX-BF16)."""
    return not CPU_BF16_FLAGS.isdisjoint(cpu_flags)


def read_cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The first processor's flags in /proc/cpuinfo; empty where there is no such file."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def cpu_bf16_units() -> bool:
    """Whether this machine's CPU has bf16 units; DINO_CPU_BF16=1 / 0 overrides the detection."""
    override = os.environ.get(CPU_BF16_ENV, "").strip()
    if override in ("0", "1"):
        return override == "1"
    return _detected_cpu_bf16_units()


@functools.cache
def _detected_cpu_bf16_units() -> bool:
    return has_bf16_units(read_cpu_flags())


def resolve_precision(precision: str, device: torch.device) -> str:
    """`precision` itself, or for `auto` the value `auto_precision` picks for this device."""
    if precision != AUTO:
        return precision
    if device.type == "cuda":
        return auto_precision("cuda", cuda_native_bf16=torch.cuda.is_bf16_supported(including_emulation=False))
    return auto_precision(device.type, cpu_bf16_units=cpu_bf16_units())


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype matrix multiplies run in under a resolved `precision` (fp32, bf16 or fp16)."""
    if precision not in COMPUTE_DTYPES:
        raise ValueError(f"precision {precision!r} is not resolved: expected one of {', '.join(COMPUTE_DTYPES)}")
    return COMPUTE_DTYPES[precision]
