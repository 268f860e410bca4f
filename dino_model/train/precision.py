"""Which arithmetic a training run uses, decided once per run from `train.precision` and the device.

The official code trains in fp16 with a gradient scaler on GPUs by default (`use_fp16=True`). The
default here, `auto`, keeps mixed precision on GPUs but prefers bf16 where the GPU has it natively
(compute capability 8.0 and later, or ROCm): bf16 has fp32's exponent range, so it needs no loss
scaling and cannot overflow where fp16 would. Older GPUs get the official fp16 with the scaler. On
a CPU, `auto` is fp32: CPU autocast to bf16 is slow on most processors and is only an opt-in.
Explicit values (`fp32`, `bf16`, `fp16`) are used as given.

CPUs with bf16 units (AVX512-BF16 or AMX) are the exception to "slow on CPU": there a bf16 step
beats fp32, but `auto` stays fp32 on every CPU so that a run's arithmetic does not depend on which
processor it lands on; `train.precision=bf16` opts in.
"""

from __future__ import annotations

import torch

AUTO = "auto"
COMPUTE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """`precision` itself, or for `auto`: bf16 on CUDA with native bf16, fp16 on other CUDA, else fp32."""
    if precision != AUTO:
        return precision
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype matrix multiplies run in under a resolved `precision` (fp32, bf16 or fp16)."""
    if precision not in COMPUTE_DTYPES:
        raise ValueError(f"precision {precision!r} is not resolved: expected one of {', '.join(COMPUTE_DTYPES)}")
    return COMPUTE_DTYPES[precision]
