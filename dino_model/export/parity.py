"""Numerical parity between the PyTorch model and its ONNX export, on real and random images.

An export is only useful if onnxruntime computes what PyTorch computes: this module runs both on
the same inputs (real images through the evaluation transform, plus seeded Gaussian noise) and
reports the largest absolute difference per output. Batches of one and of many are both run, which
also checks the dynamic batch axis. hanasobi/mlops-on-kubernetes validates exports the same way.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dino_model.config import EvalConfig
from dino_model.data.datasets import ImageFolderDataset
from dino_model.data.transforms import eval_transform
from dino_model.export.contract import INPUT_NAME, ModelContract
from dino_model.export.options import FP32_TOLERANCE

logger = logging.getLogger(__name__)

FP16_TOLERANCE = 1e-2


@dataclass
class ParityReport:
    tolerance: float
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # "<input set>/<output>" -> max |torch - ort|
    n_images: dict[str, int] = field(default_factory=dict)

    @property
    def worst(self) -> float:
        return max(self.max_abs_diff.values(), default=0.0)

    @property
    def passed(self) -> bool:
        return bool(self.max_abs_diff) and self.worst <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"worst": self.worst, "passed": self.passed}


def parity_inputs(contract: ModelContract, *, image_dir: str | Path | None = None, n_real: int = 16,
                  n_random: int = 8, seed: int = 0) -> dict[str, Tensor]:
    """{"real": (n, 3, S, S), "random": (n_random, 3, S, S)}; "real" only when image_dir is given.

    Real images are spread evenly over the folder (so every class shows up) and preprocessed with
    the evaluation transform at the contract's sizes.
    """
    inputs: dict[str, Tensor] = {}
    if image_dir is not None:
        cfg = EvalConfig(image_size=contract.image_size, resize_size=contract.resize_size)
        dataset = ImageFolderDataset(image_dir, transform=eval_transform(cfg))
        picks = np.linspace(0, len(dataset) - 1, num=min(n_real, len(dataset))).round().astype(int)
        inputs["real"] = torch.stack([dataset[int(i)][0] for i in picks])
    if n_random > 0:
        generator = torch.Generator().manual_seed(seed)
        inputs["random"] = torch.randn(n_random, *contract.input_shape, generator=generator)
    return inputs


@torch.inference_mode()
def check_parity(model: nn.Module, onnx_path: str | Path, inputs: dict[str, Tensor], *, output_names: tuple[str, ...],
                 tolerance: float = FP32_TOLERANCE) -> ParityReport:
    """Max |PyTorch - onnxruntime| per input set and output, for the whole batch and a batch of one."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    report = ParityReport(tolerance=tolerance)
    model = model.eval()
    for set_name, images in inputs.items():
        reference = _as_tuple(model(images))
        full = session.run(list(output_names), {INPUT_NAME: images.numpy()})
        single = session.run(list(output_names), {INPUT_NAME: images[:1].numpy()})
        for name, ref, out, one in zip(output_names, reference, full, single, strict=True):
            diff = max(np.abs(ref.numpy() - out).max(), np.abs(ref[:1].numpy() - one).max())
            report.max_abs_diff[f"{set_name}/{name}"] = float(diff)
        report.n_images[set_name] = len(images)
    logger.info("parity torch vs onnxruntime: worst |diff| %.3g (tolerance %.1g) over %s",
                report.worst, tolerance, report.n_images)
    return report


def _as_tuple(out: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)
