"""NVIDIA DALI preprocessing for the `gpu` flavour's image entry point, serialized when the repository is written.

On a GPU, decoding JPEGs and resizing them in Python would leave the accelerator waiting, so where the
export finds DALI (`pip install dino-mlops[dali]`, the nvidia-dali wheel) the `gpu` flavour's
`<model>_preprocess` is DALI's Triton backend running this pipeline (decoding on the GPU through
nvJPEG, "mixed"); without DALI it is the Python step of the `cpu` flavour. The steps are the client's
(python_backend/preprocessing.py): resize of the shorter side to `resize_size` (the longer one
truncated in proportion, as torchvision does), bicubic with antialiasing, centre crop to
`image_size` zero-padded where smaller, then (x / 255 - mean) / std in CHW float32. DALI's cubic
filter and its crop rounding are not PIL's, so the pixels are close but not equal: TOLERANCE bounds the
embedding difference, measured on the test model by tests/dino_model/triton/test_dali.py with the
same pipeline run on the CPU (device="cpu").

DALI's backend takes encoded images as UINT8 tensors, not Triton's BYTES: the ensemble keeps its
BYTES input for every client and a small Python step (python_backend/unpack_model.py) checks each
header against the pixel cap and lays the items out as one zero-padded UINT8 row each (JPEG, PNG
and WebP decoders stop at their own end marker, so the padding is never read).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from dino_model.errors import ConfigError
from dino_model.export.contract import ModelContract

ENCODED = "encoded"  # the DALI step's input: one zero-padded UINT8 row per encoded image
PIXELS = "pixels"
DALI_FILE = "model.dali"
# |DALI - PIL| on the L2-normalised embedding of the test model (the pixels differ by the cubic filter)
TOLERANCE = 0.05  # measured: 0.013 (min cosine 0.9995) on JPEG/PNG/WebP digits of mixed sizes


def dali_available() -> bool:
    """Whether NVIDIA DALI (the `nvidia-dali-cuda*` wheel) is importable here."""
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except ModuleNotFoundError:
        return False


def build_pipeline(contract: ModelContract, *, batch_size: int, device: str = "gpu", num_threads: int = 2,
                   device_id: int | None = 0) -> Any:
    """The preprocessing pipeline: `encoded` UINT8 rows in, FP32 (3, S, S) out.

    device="gpu" decodes on the GPU (what Triton runs); device="cpu" with device_id=None runs every
    operator on the CPU (how the tests compare it with PIL on machines without a GPU).
    """
    if device not in ("gpu", "cpu"):
        raise ConfigError(f"DALI device {device!r} is not one of gpu, cpu")
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali import math as dmath

    size, resize = contract.image_size, contract.resize_size

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, prefetch_queue_depth=1)
    def preprocess():
        encoded = fn.external_source(name=ENCODED, dtype=types.UINT8, device="cpu")
        images = fn.decoders.image(encoded, device="mixed" if device == "gpu" else "cpu", output_type=types.RGB)
        shape = fn.peek_image_shape(encoded, dtype=types.FLOAT)  # (H, W, C) from the header, on the CPU
        height, width = shape[0], shape[1]
        short = dmath.min(height, width)
        images = fn.resize(images, resize_y=dmath.floor(resize * height / short),
                           resize_x=dmath.floor(resize * width / short), interp_type=types.INTERP_CUBIC,
                           antialias=True)
        return fn.crop_mirror_normalize(images, crop=(size, size), crop_pos_x=0.5, crop_pos_y=0.5,
                                        out_of_bounds_policy="pad", fill_values=0.0,
                                        mean=[255.0 * m for m in contract.mean], std=[255.0 * s for s in contract.std],
                                        output_layout="CHW", dtype=types.FLOAT)

    return preprocess()


def serialize_pipeline(contract: ModelContract, path: str | Path, *, max_batch_size: int) -> Path:
    """Write the GPU pipeline where DALI's Triton backend reads it (`<version>/model.dali`).

    Serialized without a device (device_id=None), so a machine without a GPU writes it; DALI's backend
    builds it on each instance's own GPU when it loads.
    """
    path = Path(path)
    build_pipeline(contract, batch_size=max_batch_size, device="gpu", device_id=None).serialize(filename=str(path))
    return path
