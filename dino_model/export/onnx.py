"""ONNX export of the teacher backbone as the embedding users query.

The graph maps FP32 images (B, 3, S, S) to the L2-normalised CLS feature (the k-NN feature of
Caron et al., ICCV 2021, Sec. 4.1), optionally with the patch tokens. Only the batch axis is
dynamic: DINO's position-embedding interpolation branches on the patch grid in Python, so export
fixes the resolution. torch's exporter writes weights to a side file by
default; this module always produces one self-contained `.onnx` file, since Triton loads a single
`model.onnx` per version folder. The opset defaults to 18: the dynamo exporter's functions are
written at opset 18 (lower opsets go through a version converter that may fail silently), and every
onnxruntime from 1.14 on runs it, which covers Triton 23.04 and later (26.07 ships ORT 1.27).
"""

from __future__ import annotations

import copy
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dino_model.errors import ExportError
from dino_model.export.contract import EMBEDDING, INPUT_NAME, PATCH_TOKENS, ModelContract
from dino_model.export.options import DEFAULT_OPSET
from dino_model.runtime import atomic

logger = logging.getLogger(__name__)

SUPPORTED_OPSETS = range(17, 24)  # 17: LayerNormalization; 23: the newest torch 2.14 emits


class EmbeddingModel(nn.Module):
    """Backbone -> (L2-normalised CLS (B, D)[, patch tokens (B, N, D)]); FP32 in and out.

    With `fp16`, the weights and arithmetic are half precision inside the graph while the inputs and
    outputs stay FP32, so both variants serve the same Triton contract.
    """

    def __init__(self, backbone: nn.Module, *, patch_tokens: bool = False, fp16: bool = False) -> None:
        super().__init__()
        if patch_tokens and not hasattr(backbone, "num_prefix_tokens"):
            raise ExportError(f"patch tokens need a ViT backbone; got {type(backbone).__name__}")
        self.backbone = copy.deepcopy(backbone).half() if fp16 else backbone
        self.patch_tokens, self.fp16 = patch_tokens, fp16

    def forward(self, images: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        x = images.half() if self.fp16 else images
        if not self.patch_tokens:
            return F.normalize(self.backbone(x).float(), dim=-1)
        tokens = self.backbone.forward_features(x).float()
        return F.normalize(tokens[:, 0], dim=-1), tokens[:, self.backbone.num_prefix_tokens :]

    @property
    def output_names(self) -> tuple[str, ...]:
        return (EMBEDDING, PATCH_TOKENS) if self.patch_tokens else (EMBEDDING,)


def export_onnx(model: EmbeddingModel, output: str | Path, contract: ModelContract, *, opset: int = DEFAULT_OPSET
                ) -> Path:
    """Export `model` at the contract's resolution to one self-contained, checked `.onnx` file.

    Args:
        model: the wrapped backbone, in eval mode.
        output: path of the `.onnx` file; written atomically, no side files.
        contract: recorded in the file's metadata_props (size, mean, std, dims, lineage).
        opset: ONNX opset of the default domain.

    Raises:
        ExportError: unsupported opset, an exporter failure, or a graph `onnx.checker` rejects.
    """
    import onnx

    if opset not in SUPPORTED_OPSETS:
        raise ExportError(f"opset {opset} is not supported; use {SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1}"
                          f" (default {DEFAULT_OPSET}, which every onnxruntime since 1.14 runs)")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    example = torch.randn(2, *contract.input_shape)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".export-") as tmp:
        raw = Path(tmp) / "raw.onnx"
        _run_exporter(model.eval(), example, raw, opset=opset, output_names=model.output_names)
        proto = onnx.load(str(raw))  # pulls in any external data, so the re-save below is self-contained
    found = {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")}
    if found != {opset}:
        raise ExportError(f"the exporter produced opset {sorted(found)} instead of {opset}; use opset {DEFAULT_OPSET}")
    props = {p.key: p.value for p in proto.metadata_props} | contract.to_properties()
    onnx.helper.set_model_props(proto, props)
    proto.doc_string = f"DINO {contract.arch or 'backbone'} embedding: L2-normalised CLS, input {INPUT_NAME}"
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"onnx.checker rejected the exported graph: {exc}") from exc
    _save_single_file(proto, output)
    logger.info("exported %s (opset %d, %.1f MB, outputs %s)", output, opset, output.stat().st_size / 2**20,
                ", ".join(model.output_names))
    return output


def _run_exporter(model: nn.Module, example: Tensor, path: Path, *, opset: int, output_names: tuple[str, ...]) -> None:
    batch = torch.export.Dim("batch", min=1)
    try:
        with _quiet("onnxscript", "onnx_ir"):
            torch.onnx.export(
                model, (example,), str(path), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                output_names=list(output_names), dynamic_shapes={INPUT_NAME: {0: batch}}, external_data=False,
                optimize=True, verbose=False,
            )
    except Exception as exc:  # noqa: BLE001 - exporter failures come in many types; all mean "cannot export"
        raise ExportError(f"torch.onnx.export failed for {type(model).__name__}: {type(exc).__name__}: {exc}") from exc


@contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """Raise the exporter's optimiser loggers to WARNING for the call (they log every rewrite at INFO)."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _save_single_file(proto, output: Path) -> None:
    import onnx
    from onnx.external_data_helper import uses_external_data

    with atomic.replacing(output, mode=0o644) as temporary:
        onnx.save_model(proto, str(temporary), save_as_external_data=False)
    if any(uses_external_data(t) for t in onnx.load(str(output), load_external_data=False).graph.initializer):
        raise ExportError(f"{output} still refers to external weight files; it must be self-contained")


def read_contract(path: str | Path) -> ModelContract:
    """The serving contract recorded in an exported file's metadata_props."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"ONNX file {path} does not exist; create it with `dino-mlops export`")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf decode errors have no common base
        raise ExportError(f"{path} is not a readable ONNX file ({type(exc).__name__}: {exc})") from exc
    return ModelContract.from_properties({p.key: p.value for p in proto.metadata_props}, source=str(path))
