"""Embedding drift: is what the served model sees still like what it was trained on?

A two-sample test on embeddings rather than on pixels, because the embedding is what downstream
users consume and a shift that leaves it unchanged does no harm. The statistic is the squared
maximum mean discrepancy (MMD^2, unbiased estimator, Gretton et al. 2012) with a Gaussian kernel
k(x, y) = exp(-|x - y|^2 / (2 s^2)) on L2-normalised embeddings, between a sliding window of the last
W served embeddings and a fixed random sample of the training embeddings (the reference). The
bandwidth s is the median pairwise distance within the reference (the median heuristic), fixed at
reference time so the statistic of every window is on one scale.

The alert threshold is calibrated when the reference is built, by a permutation test on the
reference itself: it is split at random into a window-sized part and the rest many times, and the
threshold is a high quantile (default 0.99) of those MMD^2 values. Windows of in-distribution data
then exceed it with about that probability at most; the split compares W against n - W <= n
reference points, a noisier estimate than the served one (W against n). The bound holds on average
over reference draws; one fixed reference also carries its own sampling error into every window,
which matters once W approaches n (measured on digits with n = 512: W = 256 left 18% of one
reference's in-distribution windows above the threshold; W = 64 left 0-9% per reference and 2.9% over
four references), hence the default W = 64.
The threshold belongs to one window size: a shorter window is noisier, so no statistic is reported
until the window is full.

No torch here: the serving drift step (triton/python_backend/drift_model.py) and the export both use the reference file
(`<stem>.drift.npz`), and the statistic is plain numpy.

A monitor must fail closed: a reference with a NaN or zero bandwidth, a NaN threshold or a NaN or
empty sample makes every MMD^2 NaN, and `NaN > threshold` is false, so such a file would report
"no drift" forever. So a reference is checked (`reference_problem`) wherever it is written or read:
the export refuses to write an invalid one, `load` refuses to read one, and the serving drift step (which
repeats these rules) serves without the statistic and reports the monitor down. The rules: a 2-D
finite sample of unit-length rows, at least `window` of them; window an integer >= 2 (the unbiased
estimator needs two points per sample); bandwidth and threshold finite and > 0; self_term the kernel
mean of the sample itself (it enters every window's statistic, so a tampered value would shift them all).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dino_model.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

FORMAT = 1
REFERENCE_SIZE = 512
WINDOW = 64
N_PERMUTATIONS = 500
QUANTILE = 0.99
# a set of windows counts as drifted when more than this share is above the threshold: in-distribution
# windows cross it at 1 - QUANTILE on average, and up to 9% with one fixed reference (measured on digits)
DRIFTED_SHARE = 0.2
DRIFT_SUFFIX = ".drift.npz"
MIN_WINDOW = 2  # the unbiased MMD^2 averages over pairs i != j of the window
UNIT_TOLERANCE = 1e-3  # |norm - 1| allowed of a stored (float32) sample row
SELF_TERM_TOLERANCE = 1e-4  # |stored - recomputed| of the sample's kernel mean (float32 rounding)


@dataclass(frozen=True)
class DriftReference:
    """A sample of L2-normalised training embeddings and what the drift statistic needs from it.

    Attributes:
        sample: (n, d) L2-normalised reference embeddings (float32).
        mean, std: per-dimension mean and standard deviation of the normalised training embeddings.
        bandwidth: the Gaussian kernel's s (median pairwise distance within `sample`).
        threshold: MMD^2 above which a full window counts as drifted.
        window: the window size W the threshold was calibrated for.
        self_term: mean of k(r_i, r_j) over i != j in `sample` (constant in every window's MMD^2).
    """

    sample: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    bandwidth: float
    threshold: float
    window: int
    self_term: float

    def save(self, path: str | Path) -> Path:
        """Write the reference as a .npz file (what the serving drift step reads).

        Raises:
            ConfigError: the reference is invalid (see `reference_problem`); nothing is written.
        """
        path = Path(path)
        problem = reference_problem(self)
        if problem:
            raise ConfigError(f"refusing to write the drift reference {path}: {problem}")
        with path.open("wb") as fh:
            np.savez(fh, format=np.int64(FORMAT), sample=self.sample.astype(np.float32), mean=self.mean,
                     std=self.std, bandwidth=np.float64(self.bandwidth), threshold=np.float64(self.threshold),
                     window=np.int64(self.window), self_term=np.float64(self.self_term))
        return path

    @classmethod
    def load(cls, path: str | Path) -> DriftReference:
        """Read a reference written by `save`.

        Raises:
            ConfigError: the file is missing, unreadable, of another format or invalid (`reference_problem`).
        """
        try:
            with np.load(Path(path), allow_pickle=False) as data:
                if int(data["format"]) != FORMAT:
                    raise ConfigError(f"{path} is a drift reference of format {int(data['format'])}; this code "
                                      f"reads format {FORMAT}: rebuild it with `dino-mlops export`")
                reference = cls(sample=data["sample"], mean=data["mean"], std=data["std"],
                                bandwidth=float(data["bandwidth"]), threshold=float(data["threshold"]),
                                window=_integer(data["window"]), self_term=float(data["self_term"]))
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise ConfigError(f"cannot read the drift reference {path}: {exc}") from exc
        problem = reference_problem(reference)
        if problem:
            raise ConfigError(f"the drift reference {path} is invalid: {problem}; rebuild it with `dino-mlops export`")
        return reference


def _integer(value: np.ndarray) -> int:
    """A stored scalar that must be an integer (a float window such as 2.5 is not silently truncated)."""
    number = float(value)
    if not math.isfinite(number) or number != int(number):
        raise ValueError(f"window={number} is not an integer")
    return int(number)


def reference_problem(reference: DriftReference) -> str | None:
    """Why the drift statistic cannot be trusted with this reference, in one line; None when it can.

    The serving drift step repeats these rules (it cannot import this package); a test pins the two.
    """
    sample = np.asarray(reference.sample)
    if sample.ndim != 2 or sample.shape[1] < 1 or not np.issubdtype(sample.dtype, np.floating):
        return f"the sample must be a non-empty (n, d) float array, got {sample.dtype} of shape {list(sample.shape)}"
    window = reference.window
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < MIN_WINDOW:
        return f"window={window!r} must be an integer >= {MIN_WINDOW}"
    if len(sample) < window:
        return f"the sample holds {len(sample)} embeddings, fewer than the window of {window}"
    if not np.isfinite(sample).all():
        return "the sample holds NaN or infinite values"
    norms = np.linalg.norm(sample.astype(np.float64), axis=1)
    if np.abs(norms - 1.0).max() > UNIT_TOLERANCE:
        return f"the sample rows must be L2-normalised; their norms range from {norms.min():.3g} to {norms.max():.3g}"
    for name in ("bandwidth", "threshold"):
        value = getattr(reference, name)
        if not (isinstance(value, (int, float, np.floating)) and math.isfinite(value) and value > 0):
            return f"{name}={value!r} must be a finite number > 0"
    for name in ("mean", "std"):
        stats = np.asarray(getattr(reference, name))
        if stats.shape != (sample.shape[1],) or not np.isfinite(stats).all():
            return f"{name} must be {sample.shape[1]} finite numbers, got shape {list(stats.shape)}"
    expected = _off_diagonal_mean(gaussian_kernel(sample.astype(np.float64), sample.astype(np.float64),
                                                  float(reference.bandwidth)))
    if not (math.isfinite(reference.self_term) and abs(reference.self_term - expected) <= SELF_TERM_TOLERANCE):
        return f"self_term={reference.self_term!r} is not the kernel mean of the sample ({expected:.6g})"
    return None


def check_reference(reference: DriftReference, *, source: str = "the drift reference") -> DriftReference:
    """`reference`, or a ConfigError naming `source` and why the statistic cannot be computed with it."""
    problem = reference_problem(reference)
    if problem:
        raise ConfigError(f"{source} is invalid: {problem}")
    return reference


def drift_path(onnx_path: str | Path) -> Path:
    """Where the export writes the reference of a model file: `<stem>.drift.npz` beside it."""
    path = Path(onnx_path)
    stem = path.name.removesuffix(".onnx").removesuffix(".fp16")
    return path.with_name(stem + DRIFT_SUFFIX)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows of `x` scaled to unit length (float64); zero rows stay zero."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) squared Euclidean distances, clipped at 0 against rounding."""
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d2, 0.0)


def gaussian_kernel(a: np.ndarray, b: np.ndarray, bandwidth: float) -> np.ndarray:
    return np.exp(-squared_distances(a, b) / (2.0 * bandwidth * bandwidth))


def median_bandwidth(x: np.ndarray) -> float:
    """The median of the pairwise distances |x_i - x_j|, i < j (the median heuristic)."""
    if len(x) < 2:
        raise ConfigError(f"the median heuristic needs at least 2 embeddings, got {len(x)}")
    d = np.sqrt(squared_distances(x, x)[np.triu_indices(len(x), k=1)])
    s = float(np.median(d))
    if not s > 0:
        raise ConfigError("the reference embeddings are all identical: no kernel bandwidth fits them")
    return s


def _off_diagonal_mean(k: np.ndarray) -> float:
    n = len(k)
    return float((k.sum() - np.trace(k)) / (n * (n - 1)))


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, bandwidth: float) -> float:
    """Unbiased MMD^2 between samples x (m, d) and y (n, d), m, n >= 2, with a Gaussian kernel."""
    if len(x) < 2 or len(y) < 2:
        raise ConfigError(f"MMD^2 needs at least 2 points per sample, got {len(x)} and {len(y)}")
    return (_off_diagonal_mean(gaussian_kernel(x, x, bandwidth)) + _off_diagonal_mean(gaussian_kernel(y, y, bandwidth))
            - 2.0 * float(gaussian_kernel(x, y, bandwidth).mean()))


def window_mmd2(window: np.ndarray, reference: DriftReference) -> float:
    """MMD^2 of a window of raw (not yet normalised) embeddings against the reference."""
    w = l2_normalise(window)
    ref = reference.sample.astype(np.float64)
    return (_off_diagonal_mean(gaussian_kernel(w, w, reference.bandwidth)) + reference.self_term
            - 2.0 * float(gaussian_kernel(w, ref, reference.bandwidth).mean()))


def calibrate_threshold(k: np.ndarray, window: int, *, n_permutations: int = N_PERMUTATIONS,
                        quantile: float = QUANTILE, rng: np.random.Generator) -> float:
    """The `quantile` of MMD^2 between a random `window`-sized part of the reference and the rest.

    `k` is the reference's kernel matrix; each split only indexes it.
    """
    n = len(k)
    values = np.empty(n_permutations)
    for i in range(n_permutations):
        order = rng.permutation(n)
        a, b = order[:window], order[window:]
        values[i] = (_off_diagonal_mean(k[np.ix_(a, a)]) + _off_diagonal_mean(k[np.ix_(b, b)])
                     - 2.0 * float(k[np.ix_(a, b)].mean()))
    return float(np.quantile(values, quantile))


def build_reference(embeddings: np.ndarray, *, size: int = REFERENCE_SIZE, window: int = WINDOW,
                    n_permutations: int = N_PERMUTATIONS, quantile: float = QUANTILE, seed: int = 0
                    ) -> DriftReference:
    """The drift reference of training embeddings (N, d): a random sample of `size`, bandwidth, threshold.

    With fewer than 2 * `window` sampled embeddings the window shrinks to half the sample, so the
    calibration split still has two equal parts at worst.

    Raises:
        ConfigError: fewer than 4 embeddings, non-finite values, bad sizes, or a reference the statistic
            cannot use (e.g. a threshold <= 0 from degenerate embeddings).
    """
    x = np.asarray(embeddings)
    if x.ndim != 2 or len(x) < 4:
        raise ConfigError(f"a drift reference needs a (N >= 4, d) array of embeddings, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ConfigError("the training embeddings hold NaN or infinite values: no drift reference built from them")
    if size < 4 or window < 2 or not 0 < quantile < 1 or n_permutations < 1:
        raise ConfigError(f"bad drift reference settings: size={size} (>= 4), window={window} (>= 2), "
                          f"quantile={quantile} (in (0, 1)), n_permutations={n_permutations} (>= 1)")
    rng = np.random.default_rng(seed)
    normalised = l2_normalise(x)
    sample = normalised[rng.choice(len(x), size=min(size, len(x)), replace=False)]
    if window > len(sample) // 2:
        logger.warning("drift window %d shrunk to %d: only %d reference embeddings", window, len(sample) // 2,
                       len(sample))
        window = len(sample) // 2
    bandwidth = median_bandwidth(sample)
    k = gaussian_kernel(sample, sample, bandwidth)
    threshold = calibrate_threshold(k, window, n_permutations=n_permutations, quantile=quantile, rng=rng)
    reference = DriftReference(sample=sample.astype(np.float32), mean=normalised.mean(0), std=normalised.std(0),
                               bandwidth=bandwidth, threshold=threshold, window=window,
                               self_term=_off_diagonal_mean(k))
    return check_reference(reference, source="the drift reference built from these embeddings")


class DriftMonitor:
    """A sliding window of the last W served embeddings; MMD^2 against the reference every `update_every`.

    `add` returns the latest statistic: None until the window is full, then the value computed at the
    last update (recomputed once `update_every` embeddings have arrived since).
    """

    def __init__(self, reference: DriftReference, *, update_every: int = 64) -> None:
        if update_every < 1:
            raise ConfigError(f"update_every must be >= 1, got {update_every}")
        self.reference, self.update_every = check_reference(reference), update_every
        self._window: deque[np.ndarray] = deque(maxlen=reference.window)
        self._since_update = 0
        self.value: float | None = None

    def add(self, embeddings: np.ndarray) -> float | None:
        for row in np.asarray(embeddings, dtype=np.float32).reshape(-1, self.reference.sample.shape[1]):
            self._window.append(row)
            self._since_update += 1
        full = len(self._window) == self.reference.window
        if full and (self.value is None or self._since_update >= self.update_every):
            self.value = _finite(window_mmd2(np.stack(self._window), self.reference))
            self._since_update = 0
        return self.value

    @property
    def drifted(self) -> bool:
        return self.value is not None and self.value > self.reference.threshold


def batch_drift(embeddings: np.ndarray, reference: DriftReference) -> dict[str, object]:
    """The drift of a set of embeddings (a batch job's, a new data version's) in consecutive full windows.

    The images are put in a fixed random order (in folder order a window would hold one class, which
    is not what the training data looks like) and cut into windows of the reference's W (a remainder
    shorter than W is left out: the threshold holds for W only); each window's MMD^2 is compared with
    the threshold, as the serving monitor compares its sliding window.
    A set shorter than one window cannot be judged: `drifted` is then None (unknown), never False.

    Raises:
        ConfigError: the reference is invalid or belongs to another model (another width).
        DataError: the embeddings hold NaN or infinite values, or the statistic is not finite.
    """
    check_reference(reference)
    rows = np.asarray(embeddings, dtype=np.float32)
    if rows.ndim != 2 or rows.shape[1] != reference.sample.shape[1]:
        raise ConfigError(f"embeddings of shape {rows.shape} do not match the drift reference's width "
                          f"{reference.sample.shape[1]}: the reference belongs to another model")
    if not np.isfinite(rows).all():
        raise DataError("the embeddings hold NaN or infinite values: their drift cannot be computed")
    rows = rows[np.random.default_rng(0).permutation(len(rows))]
    n_windows = len(rows) // reference.window
    values = [_finite(window_mmd2(rows[i * reference.window:(i + 1) * reference.window], reference))
              for i in range(n_windows)]
    drifted = sum(v > reference.threshold for v in values)
    if n_windows == 0:
        logger.warning("%d embeddings are fewer than one drift window of %d: their drift is unknown", len(rows),
                       reference.window)
    return {"window": reference.window, "threshold": reference.threshold, "windows": n_windows,
            "drifted_windows": drifted, "mmd2_max": max(values, default=None),
            "mmd2_median": float(np.median(values)) if values else None,
            "drifted": None if n_windows == 0 else drifted / n_windows > DRIFTED_SHARE,
            "left_out": len(rows) - n_windows * reference.window}


def _finite(value: float) -> float:
    """The statistic, or a DataError: a NaN would compare below any threshold and hide drift."""
    if not math.isfinite(value):
        raise DataError(f"the drift statistic MMD^2 is {value}: the monitor cannot compute it")
    return value


def drift_ratio(embeddings: np.ndarray, reference: DriftReference) -> dict[str, float | int] | None:
    """The drift of a set of embeddings as the ratio mmd2 / threshold (what `DinoEmbeddingDrift` compares with 1).

    `mmd2` is the median over the set's full windows (`batch_drift`; one window when the set holds W
    embeddings, the serving monitor's statistic for those W). None when the set is shorter than one window:
    the threshold holds for W only, and an unknown drift must not read as a number.
    """
    summary = batch_drift(embeddings, reference)
    if summary["mmd2_median"] is None:
        return None
    mmd2 = float(summary["mmd2_median"])
    return {"ratio": mmd2 / reference.threshold, "mmd2": mmd2, "threshold": reference.threshold,
            "images": len(embeddings), "windows": int(summary["windows"])}
