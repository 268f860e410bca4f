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

Embedding drift: when the version folder holds the export's drift reference (drift.npz), each
instance keeps a sliding window of the last W answered embeddings and, every DRIFT_UPDATE_EVERY
embeddings (not every request, so inference is not slowed), sets two gauges through Triton's custom
metrics (served on the metrics port, :8002/metrics): dino_embedding_drift_mmd2 (unbiased MMD^2 of the
window against the reference, Gaussian kernel on L2-normalised embeddings; 0 until the window is
full) and dino_embedding_drift_threshold, both labelled by model and version. The statistic is the one
dino_model/monitoring/drift.py defines and calibrates (this file cannot import the package, so it
repeats the few lines of arithmetic; a test pins the two together). A drift failure never fails a
request, and never reads as "no drift" either: a third gauge, dino_embedding_drift_monitor_up, is 1
while the statistic is computed and 0 when it cannot be (a reference that breaks the rules of
drift.py's reference_problem -- NaN or zero bandwidth, NaN threshold, NaN, empty or too short sample --
or an error while computing it: then the mmd2 and threshold gauges are withdrawn), and the error is
logged. Such a model still loads and serves embeddings: the monitor is what is broken, and the
DinoEmbeddingDriftMonitorDown alert says so.

One version at a time owns the gauges. During a rollout versions N and N+1 are both loaded, each in its
own stub process; two stubs registering the same metric family made tritonserver 2.51 hang when one of
them was unloaded. So the gauges belong to whichever version holds an exclusive lock on a file named
after the server's process and the model (in the temporary directory); the others compute their
window and try to take the lock again at each update, and a version gives the lock back only after
its gauges and families are gone.
"""

import fcntl
import gc
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

ONNX_FILE = "model.onnx"
# Normalised pixels lie within a few units of zero; this leaves room for any sane preprocessing while
# keeping fp16 activations (max 65504) and fp32 variances (max ~3.4e38) far from overflow.
MAX_ABS_PIXEL = 1e4
DRIFT_FILE = "drift.npz"
EMBEDDING = "embedding"
DRIFT_UPDATE_EVERY = 64  # answered embeddings between two updates of the drift gauges
# the reference rules of dino_model/monitoring/drift.py (MIN_WINDOW, UNIT_TOLERANCE, SELF_TERM_TOLERANCE)
MIN_DRIFT_WINDOW = 2
UNIT_TOLERANCE = 1e-3
SELF_TERM_TOLERANCE = 1e-4
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
        self.drift = _drift_monitor(path.parent / DRIFT_FILE, {"model": args["model_name"],
                                                               "version": str(args["model_version"])})

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
        responses, answered, start = [], [], 0
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
            answered.extend(out for name, out in sliced if name == EMBEDDING)
        if answered and self.drift is not None:
            self._observe(np.concatenate(answered))
        return responses

    def _observe(self, embeddings):
        try:
            self.drift.add(embeddings)
        except Exception as exc:  # monitoring must never fail a request
            _log_error(f"embedding drift monitor down (dino_embedding_drift_monitor_up 0): {exc!r}")
            self.drift.gauges.withdraw_statistic()
            self.drift = BrokenDrift(self.drift.gauges)

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
        if self.drift is not None:
            self.drift.close()
        self.drift = None


class DriftGauges:
    """The drift gauges of one model, owned by at most one loaded version of it at a time.

    A version whose reference is invalid registers only the monitor_up family (there is no threshold
    to publish and no statistic to compute).
    """

    DESCRIBED = (("dino_embedding_drift_mmd2", "MMD^2 of the last served embeddings against the training "
                  "reference (0 until the window is full)"),
                 ("dino_embedding_drift_threshold", "MMD^2 above which the window counts as drifted"),
                 ("dino_embedding_drift_monitor_up", "1 while the embedding drift statistic is computed, 0 when "
                  "the monitor cannot compute it (invalid reference or a failure): the drift alert cannot fire"))
    MMD2, THRESHOLD, UP = DESCRIBED[0][0], DESCRIBED[1][0], DESCRIBED[2][0]

    def __init__(self, labels, threshold=None):
        self.labels, self.threshold = labels, threshold
        self.lock_path = Path(tempfile.gettempdir()) / f"dino-drift-{os.getppid()}-{labels['model']}.lock"
        self.lock, self.families, self.gauges = None, None, None

    def publish(self, up, value=None):
        """Publish the monitor's state (and `value`) when this version owns the gauges (taking them if free)."""
        if self.gauges is None and not self._acquire():
            return
        self.gauges[self.UP].set(1.0 if up else 0.0)
        if value is not None and self.MMD2 in self.gauges:
            self.gauges[self.MMD2].set(value)

    def withdraw_statistic(self):
        """Remove the mmd2 and threshold gauges (their families stay): a stale value must not feed the alert."""
        if self.threshold is None:
            return
        self.threshold = None
        if self.gauges is not None:
            self.gauges.pop(self.MMD2, None)
            self.gauges.pop(self.THRESHOLD, None)
            gc.collect()

    def _acquire(self):
        handle = open(self.lock_path, "a")  # noqa: SIM115 (held open while this version owns the gauges)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self.lock = handle
        described = self.DESCRIBED if self.threshold is not None else self.DESCRIBED[2:]
        self.families = [pb_utils.MetricFamily(name=name, description=text, kind=pb_utils.MetricFamily.GAUGE)
                         for name, text in described]
        self.gauges = {name: family.Metric(labels=self.labels)
                       for family, (name, _) in zip(self.families, described, strict=True)}
        if self.threshold is not None:
            self.gauges[self.THRESHOLD].set(self.threshold)
        return True

    def close(self):
        """Drop the gauges, then their families (Triton wants families to outlive metrics), then the lock."""
        self.gauges = None
        gc.collect()
        self.families = None
        gc.collect()
        if self.lock is not None:
            self.lock.close()
            self.lock = None


class DriftWindow:
    """The last `window` L2-normalised embeddings in a ring buffer; MMD^2 against the reference every N."""

    def __init__(self, reference, gauges, update_every=DRIFT_UPDATE_EVERY):
        self.sample = reference["sample"].astype(np.float64)
        self.bandwidth, self.self_term = float(reference["bandwidth"]), float(reference["self_term"])
        self.size, self.update_every = int(reference["window"]), update_every
        self.buffer = np.zeros((self.size, self.sample.shape[1]))
        self.seen, self.since_update, self.value = 0, 0, None
        self.gauges = gauges
        gauges.publish(up=True)

    def close(self):
        self.gauges.close()

    def add(self, embeddings):
        rows = _l2_normalise(np.asarray(embeddings, np.float64).reshape(len(embeddings), -1))[-self.size:]
        self.buffer[(self.seen + np.arange(len(rows))) % self.size] = rows
        self.seen += len(embeddings)
        self.since_update += len(embeddings)
        if self.seen >= self.size and (self.value is None or self.since_update >= self.update_every):
            value = _mmd2(self.buffer, self.sample, self.bandwidth, self.self_term)
            if not np.isfinite(value):  # NaN > threshold is false: a NaN gauge would hide any drift
                raise FloatingPointError(f"the drift statistic MMD^2 is {value}")
            self.value = value
            self.since_update = 0
            self.gauges.publish(up=True, value=self.value)


class BrokenDrift:
    """A monitor that cannot compute: reports dino_embedding_drift_monitor_up 0 and nothing else.

    A version that does not own the gauges (another version of the model does) tries to take them
    every `update_every` served embeddings, as DriftWindow does at each update.
    """

    def __init__(self, gauges, update_every=DRIFT_UPDATE_EVERY):
        self.gauges, self.update_every, self.since_update, self.value = gauges, update_every, 0, None
        gauges.publish(up=False)

    def add(self, embeddings):
        self.since_update += len(embeddings)
        if self.since_update >= self.update_every:
            self.since_update = 0
            self.gauges.publish(up=False)

    def close(self):
        self.gauges.close()


def reference_problem(reference):
    """Why the drift statistic cannot be trusted with this reference, or None.

    The rules of dino_model/monitoring/drift.py's reference_problem (this file cannot import it; a test
    runs the same invalid references through both).
    """
    sample = np.asarray(reference["sample"])
    if sample.ndim != 2 or sample.shape[1] < 1 or not np.issubdtype(sample.dtype, np.floating):
        return f"the sample must be a non-empty (n, d) float array, got {sample.dtype} of shape {list(sample.shape)}"
    window = np.asarray(reference["window"])
    if window.shape != () or not np.isfinite(window) or window != np.floor(window) or window < MIN_DRIFT_WINDOW:
        return f"window={window.tolist()!r} must be an integer >= {MIN_DRIFT_WINDOW}"
    if len(sample) < int(window):
        return f"the sample holds {len(sample)} embeddings, fewer than the window of {int(window)}"
    if not np.isfinite(sample).all():
        return "the sample holds NaN or infinite values"
    norms = np.linalg.norm(sample.astype(np.float64), axis=1)
    if np.abs(norms - 1.0).max() > UNIT_TOLERANCE:
        return f"the sample rows must be L2-normalised; their norms range from {norms.min():.3g} to {norms.max():.3g}"
    for name in ("bandwidth", "threshold"):
        value = float(reference[name])
        if not (np.isfinite(value) and value > 0):
            return f"{name}={value!r} must be a finite number > 0"
    self_term = float(reference["self_term"])
    rows = sample.astype(np.float64)
    expected = _kernel_mean(rows, rows, float(reference["bandwidth"]), off_diagonal=True)
    if not (np.isfinite(self_term) and abs(self_term - expected) <= SELF_TERM_TOLERANCE):
        return f"self_term={self_term!r} is not the kernel mean of the sample ({expected:.6g})"
    return None


def _drift_monitor(path, labels):
    """The drift monitor of this version: None without a reference file or custom metrics support; a
    BrokenDrift (gauge monitor_up 0, an error in the log) when the reference cannot be used."""
    if not path.is_file():
        return None
    if not hasattr(pb_utils, "MetricFamily"):
        _log_warning("this Triton has no Python-backend custom metrics: embedding drift is not exported")
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            reference = {k: data[k] for k in ("sample", "bandwidth", "self_term", "window", "threshold")}
        problem = reference_problem(reference)
    except Exception as exc:  # a broken monitoring file must not keep the model from loading
        problem = f"cannot read it ({exc!r})"
    if problem:
        _log_error(f"the drift reference {path} is invalid: {problem}; serving without the drift statistic "
                   "(dino_embedding_drift_monitor_up 0): re-export the model to rebuild it")
        return BrokenDrift(DriftGauges(labels))
    return DriftWindow(reference, DriftGauges(labels, float(reference["threshold"])))


def _l2_normalise(x):
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def _kernel_mean(a, b, bandwidth, *, off_diagonal=False):
    """Mean Gaussian kernel value between rows of a and b (without the diagonal when a is b)."""
    d2 = np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T, 0.0)
    k = np.exp(-d2 / (2.0 * bandwidth * bandwidth))
    if not off_diagonal:
        return float(k.mean())
    return float((k.sum() - np.trace(k)) / (len(k) * (len(k) - 1)))


def _mmd2(window, sample, bandwidth, self_term):
    """Unbiased MMD^2 of a window against the reference sample (whose kernel self-term is precomputed)."""
    return (_kernel_mean(window, window, bandwidth, off_diagonal=True) + self_term
            - 2.0 * _kernel_mean(window, sample, bandwidth))


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


def _log_warning(message):
    logger = getattr(pb_utils, "Logger", None)
    if logger is not None:
        logger.log_warn(message)


def _log_error(message):
    logger = getattr(pb_utils, "Logger", None)
    if logger is not None:
        logger.log_error(message)


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
