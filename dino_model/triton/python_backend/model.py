"""Triton Python-backend model: runs the exported DINO ONNX file with onnxruntime on the CPU.

This file is copied into each version folder of a `cpu` model repository, next to `model.onnx`,
for servers without Triton's onnxruntime backend (the tritonserver that ships in nvidia-pytriton).
Triton's stub process imports it on its own, so it depends on numpy and onnxruntime only.
Requests of one dynamic batch run as one onnxruntime call; a bad request (wrong dtype or shape,
non-finite pixels, pixels far out of range) is answered with an error for that request alone, as
Triton's python_backend examples do, and the rest of the batch is served. No request is ever
answered with NaN or infinite embeddings: finite but extreme pixels overflow inside the network
(float32 squares overflow near 1.8e19, so layer norms saturate and every such image gets the same
embedding; at 3e38 the answers turn NaN; fp16 models overflow past 65504), so inputs beyond
MAX_ABS_PIXEL are refused up front, and any answer that still holds NaN/Inf is refused as well.
A graph that answers NaN/Inf for a blank image is refused at load time (initialize), not in Triton's
warm-up: tritonserver 2.51 crashed (signal 11) when a model whose warm-up had failed was loaded again,
while a failed initialize is a plain load error.

Embedding drift is not computed here: every entry point of the model repository is an ensemble
whose last step (drift_model.py) watches the embeddings, whichever backend computed them.
"""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

ONNX_FILE = "model.onnx"
# Normalised pixels lie within a few units of zero; this leaves room for any sane preprocessing while
# keeping fp16 activations (max 65504) and fp32 variances (max ~3.4e38) far from overflow.
MAX_ABS_PIXEL = 1e4


class TritonPythonModel:
    """One onnxruntime session per model instance; inputs and outputs as the model config says."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        path = Path(args["model_repository"]) / args["model_version"] / ONNX_FILE
        options = ort.SessionOptions()
        threads = int(params.get("intra_op_threads", "0") or 0)
        if threads > 0:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        (spec,) = config["input"]
        self.input_name = spec["name"]
        self.sample_shape = tuple(int(d) for d in spec["dims"])
        self.output_names = [o["name"] for o in config["output"]]
        self._self_check()

    def _self_check(self):
        """Refuse to load a graph that answers NaN or Inf for a blank image (broken weights)."""
        blank = np.zeros((1, *self.sample_shape), np.float32)
        outputs = self.session.run(self.output_names, {self.input_name: blank})
        bad = _non_finite(zip(self.output_names, outputs, strict=True))
        if bad:
            name, count = bad
            raise RuntimeError(
                f"non-finite embeddings for a blank image: output '{name}' holds {count} NaN or infinite values, "
                "so the model is broken (NaN or infinite weights?)")

    def execute(self, requests):
        arrays, errors = [], []
        for request in requests:
            array = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
            error = self._check(array)
            errors.append(error)
            arrays.append(None if error else array)
        good = [a for a in arrays if a is not None]
        outputs = self.session.run(self.output_names, {self.input_name: np.concatenate(good)}) if good else []
        responses, start = [], 0
        for array, error in zip(arrays, errors, strict=True):
            if error:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=_invalid_argument(error)))
                continue
            stop = start + len(array)
            sliced = [(name, out[start:stop]) for name, out in zip(self.output_names, outputs, strict=True)]
            start = stop
            bad = _non_finite(sliced)
            if bad:
                error = _invalid_argument(
                    f"non-finite embeddings: output '{bad[0]}' holds {bad[1]} NaN or infinite values for inputs with "
                    f"|pixel| up to {float(np.abs(array).max()):.3g}; refused rather than answered (inputs out of "
                    "the range the model handles, or a broken model)")
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            tensors = [pb_utils.Tensor(name, out) for name, out in sliced]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

    def _check(self, array):
        """An error message for a request this model cannot answer, or None."""
        if array.dtype != np.float32:
            return f"input '{self.input_name}' has dtype {array.dtype}; this model takes float32 (TYPE_FP32)"
        if array.ndim != len(self.sample_shape) + 1 or tuple(array.shape[1:]) != self.sample_shape:
            expected = ", ".join(str(d) for d in ("B", *self.sample_shape))
            return f"input '{self.input_name}' has shape {list(array.shape)}; this model takes [{expected}]"
        if not np.isfinite(array).all():
            return f"input '{self.input_name}' holds NaN or infinite values; send finite, normalised pixels"
        largest = float(np.abs(array).max()) if array.size else 0.0
        if largest > MAX_ABS_PIXEL:
            return (f"input '{self.input_name}' is out of range: |pixel| up to {largest:.3g} (this model takes "
                    f"normalised pixels, |x| <= {MAX_ABS_PIXEL:g}; larger values overflow into non-finite "
                    "embeddings)")
        return None

    def finalize(self):
        self.session = None


def _non_finite(outputs):
    """(name, count) of the first output holding NaN or infinite values, or None."""
    for name, out in outputs:
        if np.issubdtype(out.dtype, np.floating) and not np.isfinite(out).all():
            return name, int(np.count_nonzero(~np.isfinite(out)))
    return None


def _invalid_argument(message):
    """A TritonError with the INVALID_ARG code where the stub supports codes (Triton >= 23.08)."""
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
