"""What `dino-mlops export` can be asked for, importable without torch.

The command line reads its flag defaults from `ExportOptions`, and building the parser must stay
cheap (the export modules pull in torch, onnx and onnxruntime), so the options live here, apart from
the code that uses them; `dino_model.export.onnx` and `dino_model.export.parity` take their defaults
(`DEFAULT_OPSET`, `FP32_TOLERANCE`) from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FORMATS = ("onnx", "safetensors")  # the first is the default
DEFAULT_OPSET = 18
FP32_TOLERANCE = 1e-4
# fields that only the ONNX export reads: the graph's outputs and precision, and its parity check
ONNX_ONLY = ("patch_tokens", "fp16", "opset", "parity_images", "n_random", "tolerance", "score_drift_on")


@dataclass
class ExportOptions:
    patch_tokens: bool = False
    fp16: bool = False  # also write <stem>.fp16.onnx (half precision inside, FP32 in and out)
    opset: int = DEFAULT_OPSET
    image_size: int | None = None  # default: eval.image_size of the checkpoint's config
    parity_images: str | None = None  # default: the checkpoint's data.knn_val / data.root, else skimage photos
    n_random: int = 8
    tolerance: float = FP32_TOLERANCE
    metrics_reports: list[str] = field(default_factory=list)  # default: <run>/eval/*.json
    data_version: str = ""  # default: the checkpoint's
    # training image folders the drift reference samples (their union); default: the checkpoint's data.root
    # and data.extra_roots, so the reference holds what the model was trained on
    drift_images: list[str] = field(default_factory=list)
    # folders of captured images (`<day>/` sub-folders, newest first) whose drift against the new reference the
    # report records as `captured_drift_ratio` (dino_model/export/drift_score.py); none: not scored
    score_drift_on: list[str] = field(default_factory=list)


def onnx_only_set(options: ExportOptions) -> list[str]:
    """The ONNX-only fields of `options` that differ from their defaults (a format that ignores them refuses them)."""
    defaults = ExportOptions()
    return [name for name in ONNX_ONLY if getattr(options, name) != getattr(defaults, name)]
