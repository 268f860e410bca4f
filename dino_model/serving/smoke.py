"""Smoke test of one served model version against the exported file it was built from.

A version passes when, on fixed images (real ones through the evaluation transform, plus seeded
noise; the same inputs as the export parity check), the server returns embeddings of the right
shape, finite, of unit norm, and equal to in-process onnxruntime on the same ONNX file within a
tolerance that depends on how the server computes (same CPU code: 1e-5; GPU: 1e-3; fp16 or
TensorRT FP16: 2e-2).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dino_model.errors import ServingError
from dino_model.export.contract import EMBEDDING, INPUT_NAME, ModelContract
from dino_model.export.parity import parity_inputs
from dino_model.serving.client import EmbeddingClient

logger = logging.getLogger(__name__)

UNIT_NORM_TOLERANCE = 1e-3


@dataclass
class SmokeReport:
    version: str
    passed: bool
    reason: str
    n_images: int
    max_abs_diff: float | None = None
    tolerance: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_tolerance(config: dict[str, Any], contract: ModelContract) -> float:
    """How closely the server must match onnxruntime on the CPU, from how the config computes."""
    accelerators = config.get("optimization", {}).get("execution_accelerators", {})
    trt_fp16 = any(a.get("name") == "tensorrt" and a.get("parameters", {}).get("precision_mode", "FP16") == "FP16"
                   for a in accelerators.get("gpu_execution_accelerator", []))
    if contract.precision == "fp16" or trt_fp16:
        return 2e-2
    return 1e-5 if config.get("backend") == "python" else 1e-3


def smoke_images(contract: ModelContract, *, image_dir: str | Path | None = None, n_random: int = 4) -> np.ndarray:
    """Fixed FP32 inputs: real images (when a folder is given) and seeded noise."""
    return torch.cat(list(parity_inputs(contract, image_dir=image_dir, n_real=8, n_random=n_random).values())).numpy()


def reference_embeddings(onnx_path: str | Path, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run([EMBEDDING], {INPUT_NAME: images})[0]


def smoke_test(client: EmbeddingClient, version: str, images: np.ndarray, reference: np.ndarray, *,
               tolerance: float) -> SmokeReport:
    """Query `version` (pinned) and compare with the reference embeddings; never raises on a bad answer."""
    report = SmokeReport(version=version, passed=False, reason="", n_images=len(images), tolerance=tolerance)
    try:
        served = client.infer(images, model_version=version)[EMBEDDING]
    except ServingError as exc:
        report.reason = f"inference failed: {exc}"
        return report
    if served.shape != reference.shape:
        report.reason = f"embedding shape {list(served.shape)}, expected {list(reference.shape)}"
    elif not np.isfinite(served).all():
        report.reason = f"{int((~np.isfinite(served)).sum())} non-finite values in the embeddings"
    elif np.abs(np.linalg.norm(served, axis=1) - 1).max() > UNIT_NORM_TOLERANCE:
        report.reason = "embeddings are not L2-normalised"
    else:
        report.max_abs_diff = float(np.abs(served - reference).max())
        report.passed = report.max_abs_diff <= tolerance
        report.reason = (f"max |served - onnxruntime| = {report.max_abs_diff:.3g} "
                         f"{'<=' if report.passed else '>'} {tolerance:g}")
    logger.info("smoke test of version %s: %s (%s)", version, "passed" if report.passed else "FAILED", report.reason)
    return report
