"""Triton Python-backend model: runs the exported DINO ONNX file with onnxruntime on the CPU.

This file is copied into each version folder of a `cpu` model repository, next to `model.onnx`,
for servers without Triton's onnxruntime backend (the tritonserver that ships in nvidia-pytriton).
Triton's stub process imports it on its own, so it depends on numpy and onnxruntime only.
Requests of one dynamic batch run as one onnxruntime call; a bad request (wrong dtype or shape,
non-finite pixels) is answered with an error for that request alone, as Triton's python_backend
examples do, and the rest of the batch is served.
"""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

ONNX_FILE = "model.onnx"


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
            named = zip(self.output_names, outputs, strict=True)
            tensors = [pb_utils.Tensor(name, out[start:stop]) for name, out in named]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start = stop
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
        return None

    def finalize(self):
        self.session = None


def _invalid_argument(message):
    """A TritonError with the INVALID_ARG code where the stub supports codes (Triton >= 23.08)."""
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
