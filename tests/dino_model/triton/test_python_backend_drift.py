"""The drift step's gauges (python_backend/drift_model.py), run in-process with a stand-in for Triton's pb_utils.

The step repeats the statistic of dino_model/monitoring/drift.py (it cannot import the package):
its gauge must equal that module's MMD^2 of the same window, be updated every DRIFT_UPDATE_EVERY
embeddings rather than every request, and be absent when the served version carries no reference. A
reference the statistic cannot use (the same files drift.py refuses) still passes embeddings through
but reports the monitor down (dino_embedding_drift_monitor_up 0), never a NaN statistic read as "no
drift". The step reads the reference of the version Triton reports ready (the stand-in's `READY`), and
follows a rollout to the next one. The embedding model's own backend computes no drift any more.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from dino_model.errors import ConfigError
from dino_model.monitoring.drift import DriftReference, drift_path, window_mmd2
from dino_model.triton.config import RepositoryOptions
from dino_model.triton.repository import DRIFT_MODEL, PYTHON_MODEL, read_config, write_model_repository

MMD2, THRESHOLD, UP = "dino_embedding_drift_mmd2", "dino_embedding_drift_threshold", "dino_embedding_drift_monitor_up"


class _Gauge:
    def __init__(self, family: _MetricFamily, labels: dict[str, str]) -> None:
        self.family, self.labels, self.values = family, labels, []

    def set(self, value: float) -> None:
        self.values.append(value)


class _MetricFamily:
    GAUGE, COUNTER = "gauge", "counter"
    created: list[_Gauge] = []

    def __init__(self, name: str, description: str, kind: str) -> None:
        self.name, self.description, self.kind = name, description, kind

    def Metric(self, labels: dict[str, str]) -> _Gauge:  # noqa: N802 (Triton's name)
        _MetricFamily.created.append(_Gauge(self, labels))
        return _MetricFamily.created[-1]


LOGGED: list[tuple[str, str]] = []
READY: set[tuple[str, str]] = set()  # (model, version) that the stand-in server reports ready


def _pb_utils() -> types.ModuleType:
    pb = types.ModuleType("triton_python_backend_utils")
    pb.MetricFamily = _MetricFamily
    pb.Logger = types.SimpleNamespace(**{f"log_{level}": (lambda message, level=level: LOGGED.append((level, message)))
                                         for level in ("info", "warn", "error")})
    pb.Tensor = lambda name, array: types.SimpleNamespace(name=name, array=array)
    pb.InferenceResponse = lambda output_tensors, error=None: types.SimpleNamespace(tensors=output_tensors, error=error)
    pb.TritonError = lambda message, code=None: types.SimpleNamespace(message=message)
    pb.get_input_tensor_by_name = lambda request, name: types.SimpleNamespace(as_numpy=lambda: request)
    pb.is_model_ready = lambda model_name, model_version="": (model_name, model_version) in READY
    return pb


def _module(path: Path, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def backend(monkeypatch: pytest.MonkeyPatch, tiny_onnx: Path):
    """load(version_dir) -> the drift step of the repository holding `version_dir`, initialised on the stand-in
    pb_utils, with that version ready; `embed` runs the embedding model's own backend (no drift)."""
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _pb_utils())
    _MetricFamily.created.clear()
    LOGGED.clear()
    READY.clear()
    module = _module(DRIFT_MODEL, "dino_drift_step_under_test")
    embedder = _module(PYTHON_MODEL, "dino_python_backend_under_test")
    loaded = []
    monkeypatch.setitem(_EMBEDDER, "session", ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"]))

    def initialised(cls, model_dir: Path, version: str):
        model = cls()
        model.initialize({"model_config": json.dumps(read_config(model_dir)), "model_repository": str(model_dir),
                          "model_version": version, "model_name": model_dir.name})
        return model

    def load(version_dir: Path):
        READY.add((version_dir.parent.name, version_dir.name))
        step = initialised(module.TritonPythonModel, version_dir.parent.parent / "dino_drift", "1")
        step._follow_served_version()  # what its first request does
        loaded.append(step)
        return step

    def embed(version_dir: Path, images: np.ndarray) -> np.ndarray:
        (response,) = initialised(embedder.TritonPythonModel, version_dir.parent, version_dir.name).execute([images])
        return next(t.array for t in response.tensors if t.name == "embedding")

    yield types.SimpleNamespace(load=load, module=module, embedder=embedder, embed=embed)
    for step in loaded:  # give the gauges' lock back, whatever the test left
        step.finalize()


def _gauges(version: str = "1") -> dict[str, _Gauge]:
    """The gauges the step created for `version`, by family name."""
    return {g.family.name: g for g in _MetricFamily.created if g.labels["version"] == version}


def _embeddings(model, images: np.ndarray) -> np.ndarray:
    """The drift step's answer for the tiny model's embeddings of `images` (as the ensemble feeds it)."""
    (embeddings,) = _EMBEDDER["session"].run(["embedding"], {"images": images})
    (response,) = model.execute([embeddings])
    (tensor,) = response.tensors
    assert tensor.name == "embedding" and np.array_equal(tensor.array, embeddings)  # passed through unchanged
    return tensor.array


_EMBEDDER: dict = {}  # "session": onnxruntime on the tiny model, set by the `backend` fixture


def test_gauges_hold_the_drift_statistic_of_the_last_window(backend, tiny_export, tiny_onnx: Path,
                                                            tmp_path: Path) -> None:
    written = write_model_repository(tiny_onnx, tmp_path / "repo", RepositoryOptions(flavour="cpu"))
    model = backend.load(Path(written["version_dir"]))
    reference = DriftReference.load(drift_path(tiny_onnx))
    rng, every, w = np.random.default_rng(0), backend.module.DRIFT_UPDATE_EVERY, reference.window
    served = [_embeddings(model, rng.standard_normal((w - 1, 3, 32, 32), dtype=np.float32))]
    mmd2, threshold, up = (_gauges()[name] for name in (MMD2, THRESHOLD, UP))
    assert len(_MetricFamily.created) == 3 and mmd2.values == []  # the window is not full yet
    assert up.values == [1.0]  # the monitor is up from the load
    served.append(_embeddings(model, rng.standard_normal((1, 3, 32, 32), dtype=np.float32)))
    assert mmd2.family.kind == threshold.family.kind == up.family.kind == "gauge"
    assert mmd2.labels == threshold.labels == up.labels == {"model": "dino", "version": "1"}
    assert threshold.values == [pytest.approx(reference.threshold)]
    assert mmd2.values == [pytest.approx(window_mmd2(np.concatenate(served)[-w:], reference), abs=1e-9)]
    for _ in range(every - 1):  # single-image requests: no update until `every` embeddings arrived
        served.append(_embeddings(model, rng.standard_normal((1, 3, 32, 32), dtype=np.float32) * 3))
    assert len(mmd2.values) == 1
    served.append(_embeddings(model, rng.standard_normal((1, 3, 32, 32), dtype=np.float32) * 3))
    assert mmd2.values[-1] == pytest.approx(window_mmd2(np.concatenate(served)[-w:], reference), abs=1e-9)
    assert mmd2.values[-1] != mmd2.values[0]


def test_no_reference_means_no_gauges(backend, tiny_onnx: Path, tmp_path: Path, exported_copy) -> None:
    bare = exported_copy(tiny_onnx, tmp_path / "bare")
    written = write_model_repository(bare, tmp_path / "repo", RepositoryOptions(flavour="cpu"))
    model = backend.load(Path(written["version_dir"]))
    assert model.drift is None and _MetricFamily.created == []
    assert _embeddings(model, np.zeros((2, 3, 32, 32), np.float32)).shape == (2, 64)


def test_a_drift_failure_never_fails_a_request(backend, tiny_export, tiny_onnx: Path, tmp_path: Path) -> None:
    written = write_model_repository(tiny_onnx, tmp_path / "repo", RepositoryOptions(flavour="cpu"))
    model = backend.load(Path(written["version_dir"]))
    model.drift.sample = np.zeros((3, 5))  # wrong width: the statistic raises
    model.drift.seen = model.drift.size
    assert _embeddings(model, np.zeros((1, 3, 32, 32), np.float32)).shape == (1, 64)
    assert _gauges()[UP].values == [1.0, 0.0]  # the monitor reports itself down
    assert set(model.drift.gauges.gauges) == {UP}  # the stale statistic and threshold are withdrawn
    assert any(level == "error" and "drift monitor down" in message for level, message in LOGGED)
    assert _embeddings(model, np.zeros((1, 3, 32, 32), np.float32)).shape == (1, 64)  # and keeps serving


def test_a_nan_statistic_marks_the_monitor_down_instead_of_publishing_nan(backend, tiny_export, tiny_onnx: Path,
                                                                          tmp_path: Path) -> None:
    """A NaN MMD^2 compares below any threshold: it must never reach the gauge the alert reads."""
    written = write_model_repository(tiny_onnx, tmp_path / "repo", RepositoryOptions(flavour="cpu"))
    model = backend.load(Path(written["version_dir"]))
    model.drift.bandwidth = float("nan")  # as a corrupted reference would make it
    images = np.zeros((model.drift.size, 3, 32, 32), np.float32)
    assert _embeddings(model, images).shape == (len(images), 64)
    gauges = _gauges()
    assert gauges[MMD2].values == [] and gauges[UP].values == [1.0, 0.0]
    assert set(model.drift.gauges.gauges) == {UP}


def test_an_unreadable_reference_does_not_keep_the_model_from_loading(backend, tiny_export, tiny_onnx: Path,
                                                                      tmp_path: Path) -> None:
    written = write_model_repository(tiny_onnx, tmp_path / "repo", RepositoryOptions(flavour="cpu"))
    version_dir = Path(written["version_dir"])
    (version_dir / "drift.npz").write_bytes(b"truncated")
    model = backend.load(version_dir)
    assert [(g.family.name, g.values) for g in _MetricFamily.created] == [(UP, [0.0])]
    assert _embeddings(model, np.zeros((1, 3, 32, 32), np.float32)).shape == (1, 64)


def _corrupted(source: Path, target: Path, **fields) -> Path:
    """A copy of the drift reference `source` with `fields` replaced."""
    with np.load(source) as data:
        arrays = {k: data[k] for k in data.files}
    with target.open("wb") as fh:
        np.savez(fh, **(arrays | fields))
    return target


def _bad_fields(reference: DriftReference) -> dict[str, dict]:
    sample = reference.sample
    nan_row = sample.copy()
    nan_row[0, 0] = np.nan
    return {
        "nan bandwidth": {"bandwidth": np.float64("nan")},
        "zero bandwidth": {"bandwidth": np.float64(0.0)},
        "nan threshold": {"threshold": np.float64("nan")},
        "negative threshold": {"threshold": np.float64(-0.01)},
        "nan in the sample": {"sample": nan_row},
        "empty sample": {"sample": sample[:0]},
        "zeroed sample": {"sample": np.zeros_like(sample)},
        "sample shorter than the window": {"sample": sample[:reference.window - 1]},
        "window 0": {"window": np.int64(0)},
        "window 1": {"window": np.int64(1)},
        "fractional window": {"window": np.float64(2.5)},
        "tampered self term": {"self_term": np.float64(reference.self_term + 0.2)},
    }


BAD = ["nan bandwidth", "zero bandwidth", "nan threshold", "negative threshold", "nan in the sample", "empty sample",
       "zeroed sample", "sample shorter than the window", "window 0", "window 1", "fractional window",
       "tampered self term"]


@pytest.mark.parametrize("case", BAD)
def test_an_invalid_reference_serves_with_the_monitor_down_and_the_package_refuses_it(
        backend, tiny_export, tiny_onnx: Path, tmp_path: Path, case: str) -> None:
    """The backend's rules are the package's: every file drift.py refuses leaves the served monitor down."""
    written = write_model_repository(tiny_onnx, tmp_path / "repo", RepositoryOptions(flavour="cpu"))
    version_dir = Path(written["version_dir"])
    reference = DriftReference.load(drift_path(tiny_onnx))
    bad = _corrupted(drift_path(tiny_onnx), tmp_path / "bad.drift.npz", **_bad_fields(reference)[case])
    with pytest.raises(ConfigError, match="bad.drift.npz"):
        DriftReference.load(bad)
    (version_dir / "drift.npz").write_bytes(bad.read_bytes())
    model = backend.load(version_dir)
    images = np.zeros((max(reference.window, backend.module.DRIFT_UPDATE_EVERY), 3, 32, 32), np.float32)
    assert _embeddings(model, images).shape == (len(images), 64)  # embeddings are still served
    assert [(g.family.name, g.values) for g in _MetricFamily.created] == [(UP, [0.0, 0.0])]
    assert [level for level, message in LOGGED if "drift.npz is invalid" in message] == ["error"]


def test_one_loaded_step_at_a_time_owns_the_gauges(backend, tiny_export, tiny_onnx: Path, tmp_path: Path) -> None:
    """Two stubs of the drift step loaded together (the step reloaded): one set of families, handed over when
    the first unloads."""
    version_dir = Path(write_model_repository(tiny_onnx, tmp_path / "repo", RepositoryOptions(flavour="cpu"))
                       ["version_dir"])
    first, second = backend.load(version_dir), backend.load(version_dir)
    every = backend.module.DRIFT_UPDATE_EVERY
    images = np.random.default_rng(0).standard_normal((max(first.drift.size, every), 3, 32, 32)).astype(np.float32)
    _embeddings(first, images)
    _embeddings(second, images)
    assert len(_MetricFamily.created) == 3  # the second computes, publishes nothing
    first.finalize()
    _embeddings(second, images[:every])
    assert len(_MetricFamily.created) == 6
    assert [g.labels for g in _MetricFamily.created[-3:]] == [{"model": "dino", "version": "1"}] * 3
    assert _gauges()[MMD2].values == [pytest.approx(second.drift.value)]  # the second's own window
    assert _gauges()[UP].values == [1.0]
    second.finalize()


def test_the_step_follows_a_rollout_to_the_new_versions_reference(backend, tiny_export, tiny_onnx: Path,
                                                                  tmp_path: Path) -> None:
    """After `deploy` makes version 2 the ready one, the step reads version 2's reference and relabels its gauges."""
    repo = tmp_path / "repo"
    one = Path(write_model_repository(tiny_onnx, repo, RepositoryOptions(flavour="cpu"))["version_dir"])
    step = backend.load(one)
    every, reference = backend.module.DRIFT_UPDATE_EVERY, DriftReference.load(drift_path(tiny_onnx))
    rng = np.random.default_rng(0)
    _embeddings(step, rng.standard_normal((reference.window, 3, 32, 32)).astype(np.float32))
    assert _gauges("1")[MMD2].values and step.version == 1
    two = Path(write_model_repository(tiny_onnx, repo, RepositoryOptions(flavour="cpu"))["version_dir"])
    _corrupted(drift_path(tiny_onnx), two / "drift.npz", threshold=np.float64(reference.threshold * 2))
    READY.clear()
    READY.add(("dino", two.name))  # the switch: 2 serves, 1 is retired
    served = [_embeddings(step, rng.standard_normal((every, 3, 32, 32)).astype(np.float32))]
    assert step.version == 2 and step.drift.gauges.labels == {"model": "dino", "version": "2"}
    assert step.drift.gauges.gauges is not None and _gauges("2")[THRESHOLD].values == [
        pytest.approx(reference.threshold * 2)]  # version 2's own reference
    assert step.drift.seen == every >= reference.window  # a new window: version 1's embeddings are not counted
    assert _gauges("2")[MMD2].values == [pytest.approx(window_mmd2(served[0][-reference.window:], reference),
                                                       abs=1e-9)]


def test_the_embedding_model_computes_no_drift(backend, tiny_export, tiny_onnx: Path, tmp_path: Path) -> None:
    version_dir = Path(write_model_repository(tiny_onnx, tmp_path / "repo", RepositoryOptions(flavour="cpu"))
                       ["version_dir"])
    _MetricFamily.created.clear()
    assert backend.embed(version_dir, np.zeros((70, 3, 32, 32), np.float32)).shape == (70, 64)
    assert _MetricFamily.created == [] and not hasattr(backend.embedder, "DriftWindow")


def test_with_capture_on_each_window_is_shared_with_the_capture_step(backend, tiny_export, tiny_onnx: Path,
                                                                     tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """capture_enabled (triton-repo --capture): the window's mmd2, threshold and ratio go to drift_share's file;
    a step with capture off writes none, and an unloading step removes its own."""
    import os
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv("DINO_CAPTURE_ENABLED", raising=False)
    shared = tmp_path / f"dino-drift-{os.getppid()}-dino.json"
    reference = DriftReference.load(drift_path(tiny_onnx))
    images = np.random.default_rng(0).standard_normal((reference.window, 3, 32, 32), dtype=np.float32)
    off = write_model_repository(tiny_onnx, tmp_path / "off", RepositoryOptions(flavour="cpu"))
    _embeddings(backend.load(Path(off["version_dir"])), images)
    assert _gauges()[MMD2].values and not shared.exists()
    written = write_model_repository(tiny_onnx, tmp_path / "on", RepositoryOptions(flavour="cpu", capture=True))
    model = backend.load(Path(written["version_dir"]))
    _embeddings(model, images)
    record = json.loads(shared.read_text())
    assert record["version"] == "1" and record["mmd2"] == pytest.approx(model.drift.value)
    assert record["threshold"] == pytest.approx(reference.threshold)
    assert record["ratio"] == pytest.approx(model.drift.value / reference.threshold)
    model.finalize()
    assert not shared.exists()
