"""Triton Python-backend step of every entry point: the embedding drift statistic, after the embedding.

Copied as `model.py` into the version folder of `<model>_drift`. The ensembles of the model repository
(`<model>_images`: image bytes in; `<model>_monitored`: preprocessed tensors in) pass each answered
embedding through this step, so whatever computes the embedding -- the `cpu` flavour's Python backend,
Triton's onnxruntime backend on a GPU -- the same gauges, alert and dashboard follow it. The embeddings
come out unchanged: this step only watches them.

The statistic: a sliding window of the last W answered embeddings and, every DRIFT_UPDATE_EVERY
embeddings (not every request, so inference is not slowed), two gauges through Triton's custom metrics
(served on the metrics port, :8002/metrics): dino_embedding_drift_mmd2 (unbiased MMD^2 of the window
against the reference, Gaussian kernel on L2-normalised embeddings; 0 until the window is full) and
dino_embedding_drift_threshold, both labelled by model and version -- the embedding model's name and the
version serving it. The reference is that version's (`<model>/<version>/drift.npz`, written by the
export); which version serves is asked of Triton (versions.py) when the step starts and at every
update, so after a rollout the step reads the new version's reference, starts a new window and
relabels its gauges. The arithmetic is the one dino_model/monitoring/drift.py defines and calibrates
(this file cannot import the package, so it repeats the few lines; a test pins the two together).

A drift failure never fails a request, and never reads as "no drift" either: a third gauge,
dino_embedding_drift_monitor_up, is 1 while the statistic is computed and 0 when it cannot be (a
reference that breaks the rules of drift.py's reference_problem -- NaN or zero bandwidth, NaN
threshold, NaN, empty or too short sample -- or an error while computing it: then the mmd2 and
threshold gauges are withdrawn), and the error is logged. A version without a reference has no gauges.

With capture switched on (capture_hook.switched_on: DINO_CAPTURE_ENABLED, else this step's own
`capture_enabled` parameter, which `dino-mlops triton-repo --capture` writes), each completed window's
mmd2, threshold and ratio are also written to a small file of this server (drift_share.py), from which
the image entry point's first step records the drift score of the images it captures.

One stub at a time owns the gauges. Two stubs registering the same metric family made tritonserver 2.51
hang when one of them was unloaded (a reload of this step loads the new instance before the old one
goes). So the gauges belong to whichever stub holds an exclusive lock on a file named after the
server's process and the model (in the temporary directory); the others compute their window and try
to take the lock again at each update, and a stub gives the lock back only after its gauges and
families are gone.
"""

import fcntl
import gc
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

DRIFT_FILE = "drift.npz"
EMBEDDING = "embedding"
DRIFT_UPDATE_EVERY = 64  # answered embeddings between two updates of the drift gauges
# the reference rules of dino_model/monitoring/drift.py (MIN_WINDOW, UNIT_TOLERANCE, SELF_TERM_TOLERANCE)
MIN_DRIFT_WINDOW = 2
UNIT_TOLERANCE = 1e-3
SELF_TERM_TOLERANCE = 1e-4


def _sibling(name):
    """The module `name`.py shipped beside this file (the stub does not put this folder on sys.path)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


versions = _sibling("versions")
capture_hook = _sibling("capture_hook")
drift_share = _sibling("drift_share")


class TritonPythonModel:
    """Pass embeddings through; keep the drift window of the served version of the embedding model."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.embedding_model = params["embedding_model"]
        self.repository = Path(args["model_repository"]).parent
        self.output_names = [o["name"] for o in config["output"]]
        self.version, self.drift, self.since_check = None, None, 0
        # shared with the capture step of the image entry point when capture is on (drift_share.py)
        self.share = drift_share.share_path(self.embedding_model) if capture_hook.switched_on(config) else None
        self.share_failed = False

    def execute(self, requests):
        responses, answered = [], []
        for request in requests:
            tensors = [pb_utils.get_input_tensor_by_name(request, name) for name in self.output_names]
            arrays = {name: t.as_numpy() for name, t in zip(self.output_names, tensors, strict=True) if t is not None}
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(name, array) for name, array in arrays.items()]))
            if EMBEDDING in arrays:
                answered.append(arrays[EMBEDDING])
        if answered:
            self._observe(np.concatenate(answered))
        return responses

    def _observe(self, embeddings):
        """Add to the window of the served version, after checking (every update) which version serves."""
        self.since_check += len(embeddings)
        if self.version is None or self.since_check >= DRIFT_UPDATE_EVERY:
            self.since_check = 0
            self._follow_served_version()
        if self.drift is None:
            return
        try:
            self.drift.add(embeddings)
        except Exception as exc:  # monitoring must never fail a request
            _log_error(f"embedding drift monitor down (dino_embedding_drift_monitor_up 0): {exc!r}")
            self.drift.gauges.withdraw_statistic()
            self.drift = BrokenDrift(self.drift.gauges)
            self._unshare()

    def _follow_served_version(self):
        try:
            version = versions.served_version(pb_utils, self.repository, self.embedding_model)
        except Exception as exc:  # monitoring must never fail a request
            _log_error(f"cannot tell which version of {self.embedding_model!r} serves: {exc!r}")
            return
        if version is None or version == self.version:
            return
        if self.drift is not None:
            self.drift.close()
        self.version = version
        labels = {"model": self.embedding_model, "version": str(version)}
        self._unshare()
        on_value = None if self.share is None else self._share
        self.drift = _drift_monitor(self.repository / self.embedding_model / str(version) / DRIFT_FILE, labels,
                                    on_value)

    def _share(self, mmd2, threshold):
        """Hand a completed window to the capture step; a failure is logged once and never fails a request."""
        try:
            drift_share.write_window(self.share, drift_share.window_record(self.version, mmd2, threshold))
        except Exception as exc:
            if not self.share_failed:
                self.share_failed = True
                _log_error(f"cannot share the drift window with the capture step ({self.share}): {exc!r}")

    def _unshare(self):
        if self.share is not None:
            try:
                drift_share.remove_window(self.share)
            except OSError as exc:
                _log_error(f"cannot remove the shared drift window {self.share}: {exc!r}")

    def finalize(self):
        if self.drift is not None:
            self.drift.close()
        self.drift = None
        self._unshare()


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

    def __init__(self, reference, gauges, update_every=DRIFT_UPDATE_EVERY, on_value=None):
        self.sample = reference["sample"].astype(np.float64)
        self.bandwidth, self.self_term = float(reference["bandwidth"]), float(reference["self_term"])
        self.threshold, self.on_value = float(reference["threshold"]), on_value
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
            if self.on_value is not None:
                self.on_value(self.value, self.threshold)


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


def _drift_monitor(path, labels, on_value=None):
    """The drift monitor of this version: None without a reference file or custom metrics support; a
    BrokenDrift (gauge monitor_up 0, an error in the log) when the reference cannot be used. `on_value`
    (mmd2, threshold) is called after each completed window."""
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
    return DriftWindow(reference, DriftGauges(labels, float(reference["threshold"])), on_value=on_value)


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


def _log_warning(message):
    logger = getattr(pb_utils, "Logger", None)
    if logger is not None:
        logger.log_warn(message)


def _log_error(message):
    logger = getattr(pb_utils, "Logger", None)
    if logger is not None:
        logger.log_error(message)
