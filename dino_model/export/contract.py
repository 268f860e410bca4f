"""The serving contract of an exported model: tensor names, input size, preprocessing, embedding size.

One record travels with the model everywhere it goes: in the ONNX file's `metadata_props`, in the
Triton `config.pbtxt` parameters, and back to clients, which preprocess images from it exactly as
the evaluation does (resize, centre crop, ImageNet normalisation; Caron et al., ICCV 2021, App.).
Lineage (data version, code revision, evaluation metrics as JSON, checkpoint, file hash, and which
export record vouched for it: dino_model/export/lineage.py) rides along under its own fixed keys.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from dino_model.errors import ExportError

INPUT_NAME = "images"
EMBEDDING = "embedding"
PATCH_TOKENS = "patch_tokens"
PREFIX = "dino."
# lineage keys, unprefixed in ONNX metadata and Triton parameters (dino_model/serving/gate.py reads "metrics"
# when "lineage_verified" names the export record that vouched for it and "lineage_signature", made by
# the export's key "lineage_key_id", signs "onnx_sha256" and the lineage: dino_model/export/signing.py)
LINEAGE_KEYS = ("data_version", "data_revision", "code_revision", "metrics", "checkpoint", "init_weights",
                "init_sha256", "onnx_sha256", "lineage_verified", "lineage_signature", "lineage_key_id")


@dataclass(frozen=True)
class ModelContract:
    """What a caller must send and will receive; images are FP32 (B, 3, image_size, image_size)."""

    image_size: int
    resize_size: int
    embed_dim: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_patches: int = 0  # patch tokens per image; 0 when the model has no patch_tokens output
    arch: str = ""
    patch_size: int = 0
    precision: str = "fp32"  # weights and arithmetic inside the graph; inputs and outputs stay FP32
    interpolation: str = "bicubic"
    outputs: tuple[str, ...] = (EMBEDDING,)
    lineage: dict[str, str] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    def output_dims(self, name: str) -> tuple[int, ...]:
        """Per-image dims of an output (the batch axis excluded)."""
        return (self.embed_dim,) if name == EMBEDDING else (self.num_patches, self.embed_dim)

    def to_properties(self) -> dict[str, str]:
        """Flat string map: ONNX `metadata_props` and Triton `parameters` take strings only."""
        values = {
            "image_size": self.image_size, "resize_size": self.resize_size, "embed_dim": self.embed_dim,
            "mean": list(self.mean), "std": list(self.std), "num_patches": self.num_patches,
            "arch": self.arch, "patch_size": self.patch_size, "precision": self.precision,
            "interpolation": self.interpolation, "outputs": list(self.outputs),
            "normalization": "l2", "input": INPUT_NAME,
        }
        props = {PREFIX + k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}
        props |= {k: str(v) for k, v in self.lineage.items()}
        return props

    @classmethod
    def from_properties(cls, props: Mapping[str, str], *, source: str) -> ModelContract:
        """Inverse of `to_properties`; ExportError naming the missing keys and the source."""
        required = ("image_size", "resize_size", "embed_dim", "mean", "std")
        missing = [PREFIX + k for k in required if PREFIX + k not in props]
        if missing:
            raise ExportError(
                f"{source} carries no DINO serving contract (missing {', '.join(missing)}); "
                "export it with `dino-mlops export`, which records it"
            )

        def get(key: str, default: Any) -> Any:
            raw = props.get(PREFIX + key)
            if raw is None:
                return default
            return raw if isinstance(default, str) else json.loads(raw)

        return cls(
            image_size=int(get("image_size", 0)), resize_size=int(get("resize_size", 0)),
            embed_dim=int(get("embed_dim", 0)), mean=tuple(get("mean", [])), std=tuple(get("std", [])),
            num_patches=int(get("num_patches", 0)), arch=get("arch", ""), patch_size=int(get("patch_size", 0)),
            precision=get("precision", "fp32"), interpolation=get("interpolation", "bicubic"),
            outputs=tuple(get("outputs", [EMBEDDING])),
            lineage={k: props[k] for k in LINEAGE_KEYS if k in props},
        )

    def with_lineage(self, **updates: str) -> ModelContract:
        """A copy whose lineage is updated with the non-empty values given."""
        unknown = sorted(set(updates) - set(LINEAGE_KEYS))
        if unknown:
            raise ExportError(f"unknown lineage keys {unknown}; known: {', '.join(LINEAGE_KEYS)}")
        lineage = self.lineage | {k: v for k, v in updates.items() if v}
        return replace(self, lineage=lineage)
