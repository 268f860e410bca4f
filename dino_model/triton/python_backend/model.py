"""Triton Python-backend model: runs the exported DINO ONNX file with onnxruntime on the CPU.

This file is copied into each version folder of a `cpu` model repository, next to `model.onnx`,
for servers without Triton's onnxruntime backend (the tritonserver that ships in nvidia-pytriton).
Triton's stub process imports it on its own, so it depends on numpy and onnxruntime only.
Requests of one dynamic batch run as one onnxruntime call (a single request's input, a view of Triton's
shared memory, goes in without a copy); each instance's session gets the CPUs this stub may use
(affinity capped by the cgroup quota) shared out among the instances, unless the config's
intra_op_threads says otherwise, since onnxruntime's own default (one thread per core of the host)
oversubscribes a container's quota and the other instances. A bad request (wrong dtype or shape,
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
import math
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

ONNX_FILE = "model.onnx"
# Normalised pixels lie within a few units of zero; this leaves room for any sane preprocessing while
# keeping fp16 activations (max 65504) and fp32 variances (max ~3.4e38) far from overflow.
MAX_ABS_PIXEL = 1e4
CGROUP_ROOT = Path("/sys/fs/cgroup")


class TritonPythonModel:
    """One onnxruntime session per model instance; inputs and outputs as the model config says."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        path = Path(args["model_repository"]) / args["model_version"] / ONNX_FILE
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads(params.get("intra_op_threads", ""), _instance_count(config))
        if options.intra_op_num_threads > 1:  # idle pool threads spin by default, taking the CPUs others need
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        _log_info(f"{args['model_name']} version {args['model_version']}: onnxruntime with "
                  f"{options.intra_op_num_threads} intra-op thread(s) ({usable_cpus()} usable CPUs, "
                  f"{_instance_count(config)} instance(s))")
        (spec,) = config["input"]
        self.input_name = spec["name"]
        self.sample_shape = tuple(int(d) for d in spec["dims"])
        self.ndim = len(self.sample_shape) + 1
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
        arrays = [pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy() for request in requests]
        errors = [self._check(array) for array in arrays]
        good = [array for array, error in zip(arrays, errors, strict=True) if error is None]
        outputs = []
        if good:  # one request: its array as it is (no concatenation copy)
            batch = good[0] if len(good) == 1 else np.concatenate(good)
            outputs = self.session.run(self.output_names, {self.input_name: batch})
        all_finite = all(_finite(out) for out in outputs)  # one pass over the batch; per request only on failure
        responses, start = [], 0
        for array, error in zip(arrays, errors, strict=True):
            if error:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=_invalid_argument(error)))
                continue
            stop = start + len(array)
            sliced = [(name, out[start:stop]) for name, out in zip(self.output_names, outputs, strict=True)]
            start = stop
            bad = None if all_finite else _non_finite(sliced)
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
        """An error message for a request this model cannot answer, or None.

        The common case costs two reductions: min and max propagate NaN, so finite pixels within
        MAX_ABS_PIXEL pass at once, and only a failing request pays for the detailed checks below.
        """
        if (array.dtype == np.float32 and array.shape[1:] == self.sample_shape and array.ndim == self.ndim
                and (array.size == 0 or (array.min() >= -MAX_ABS_PIXEL and array.max() <= MAX_ABS_PIXEL))):
            return None
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


def cgroup_cpu_limit(root=CGROUP_ROOT):
    """CPUs allowed by the cgroup quota, or None (dino_model/runtime/cpus.py's rule, repeated: no package here)."""
    try:
        fields = (root / "cpu.max").read_text().split()
        quota, period = fields[0], fields[1] if len(fields) > 1 else "100000"
    except (OSError, IndexError):
        try:
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    if quota == "max" or not quota.lstrip("-").isdigit() or not period.isdigit():
        return None
    if int(quota) <= 0 or int(period) <= 0:
        return None
    return int(quota) / int(period)


def usable_cpus(root=CGROUP_ROOT):
    """The affinity mask's CPUs, capped by the cgroup quota (rounded up); at least 1."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        count = min(count, math.ceil(limit))
    return max(1, count)


def intra_op_threads(configured, instances, root=CGROUP_ROOT):
    """The configured thread count, or (0 or empty) the usable CPUs shared out among the instances, at least 1.

    onnxruntime's own default is one thread per physical core of the host, which in a container with a
    CPU quota, or beside other instances, oversubscribes the CPUs this stub may use.
    """
    threads = int(configured or 0)
    return threads if threads > 0 else max(1, usable_cpus(root) // max(1, instances))


def _instance_count(config):
    return sum(int(group.get("count", 1) or 1) for group in config.get("instance_group", [])) or 1


def _finite(out):
    return not np.issubdtype(out.dtype, np.floating) or bool(np.isfinite(out).all())


def _log_info(message):
    logger = getattr(pb_utils, "Logger", None)
    if logger is not None:
        logger.log_info(message)


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
