"""Which implementation of numerically equivalent operations a training run uses, per device and dtype.

The fastest attention differs by device and arithmetic, and the difference is large: on a CPU with
AVX512-BF16, the fused scaled-dot-product attention's backward runs 4.2x slower in bf16 than in fp32
(367 vs 87 ms per vit_tiny/4 step, 2 x 32 px + 6 x 16 px crops, batch 32), while two plain matrix
multiplies and a softmax use the bf16 units: the whole bf16 step took 1.58 s with them against
2.07 s fused. In fp32 on the same CPU the two are level (2.65 s fused, 2.67 s plain), and the fused
kernel keeps its smaller memory. On CUDA the fused kernels (flash, memory-efficient) are the fast
path in every dtype (not measured here). The table below holds the choices (docs/benchmarks.md has
the numbers); anything not in it keeps the library default, the fused kernel. Both paths compute
the same function: only rounding differs.
"""

from __future__ import annotations

import logging

import torch
from timm.layers import Attention
from torch import nn

logger = logging.getLogger(__name__)

FUSED = "fused"  # torch.nn.functional.scaled_dot_product_attention
MATMUL = "matmul"  # softmax(q k^T * scale) v as two matrix multiplies

# (device type, compute dtype) -> attention implementation, as measured; others get FUSED
ATTENTION: dict[tuple[str, torch.dtype], str] = {
    ("cpu", torch.float32): FUSED,
    ("cpu", torch.bfloat16): MATMUL,
    ("cuda", torch.float32): FUSED,
    ("cuda", torch.bfloat16): FUSED,
    ("cuda", torch.float16): FUSED,
}


def attention_impl(device_type: str, dtype: torch.dtype) -> str:
    """The attention implementation to train with on `device_type` ("cpu", "cuda", ...) computing in `dtype`."""
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, not {dtype!r}")
    return ATTENTION.get((device_type, dtype), FUSED)


def use_attention(model: nn.Module, impl: str) -> int:
    """Switch every timm attention layer of `model` to `impl` (FUSED or MATMUL); how many layers were set."""
    if impl not in (FUSED, MATMUL):
        raise ValueError(f"attention implementation {impl!r} is not one of {FUSED}, {MATMUL}")
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    for layer in layers:
        layer.fused_attn = impl == FUSED
    return len(layers)


def apply_fast_paths(models: list[nn.Module], device: torch.device, dtype: torch.dtype) -> str:
    """Set the measured fastest attention for (device, dtype) on each model; the implementation chosen."""
    impl = attention_impl(device.type, dtype)
    n = sum(use_attention(model, impl) for model in models)
    if n:
        logger.debug("attention: %s in %d layer(s) for %s/%s", impl, n, device.type, dtype)
    return impl
