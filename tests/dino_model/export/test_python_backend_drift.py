"""The Python backend's drift gauges, run in-process with a stand-in for Triton's pb_utils.

The backend repeats the statistic of dino_model/monitoring/drift.py (it cannot import the package):
its gauge must equal that module's MMD^2 of the same window, be updated every DRIFT_UPDATE_EVERY
embeddings rather than every request, and be absent when the version carries no reference.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from dino_model.export.triton_config import RepositoryOptions
from dino_model.export.triton_repository import PYTHON_MODEL, read_config, write_model_repository
from dino_model.monitoring.drift import DriftReference, drift_path, window_mmd2


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


def _pb_utils() -> types.ModuleType:
    pb = types.ModuleType("triton_python_backend_utils")
    pb.MetricFamily = _MetricFamily
    pb.Tensor = lambda name, array: types.SimpleNamespace(name=name, array=array)
    pb.InferenceResponse = lambda output_tensors, error=None: types.SimpleNamespace(tensors=output_tensors, error=error)
    pb.TritonError = lambda message, code=None: types.SimpleNamespace(message=message)
    pb.get_input_tensor_by_name = lambda request, name: types.SimpleNamespace(as_numpy=lambda: request)
    return pb


@pytest.fixture
def backend(monkeypatch: pytest.MonkeyPatch):
    """load(version_dir) -> an initialised TritonPythonModel of the backend file, on the stand-in pb_utils."""
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _pb_utils())
    _MetricFamily.created.clear()
    spec = importlib.util.spec_from_file_location("dino_python_backend_under_test", PYTHON_MODEL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def load(version_dir: Path):
        model = module.TritonPythonModel()
        config = read_config(version_dir.parent)
        model.initialize({"model_config": json.dumps(config), "model_repository": str(version_dir.parent),
                          "model_version": version_dir.name, "model_name": version_dir.parent.name})
        return model

    return types.SimpleNamespace(load=load, module=module)


def _embeddings(model, images: np.ndarray) -> np.ndarray:
    (response,) = model.execute([images])
    return next(t.array for t in response.tensors if t.name == "embedding")


def test_gauges_hold_the_drift_statistic_of_the_last_window(backend, tiny_export, tiny_onnx: Path,
                                                            tmp_path: Path) -> None:
    written = write_model_repository(tiny_onnx, tmp_path / "repo", RepositoryOptions(flavour="cpu"))
    model = backend.load(Path(written["version_dir"]))
    reference = DriftReference.load(drift_path(tiny_onnx))
    rng, every, w = np.random.default_rng(0), backend.module.DRIFT_UPDATE_EVERY, reference.window
    served = [_embeddings(model, rng.standard_normal((w - 1, 3, 32, 32), dtype=np.float32))]
    assert _MetricFamily.created == []  # the window is not full yet
    served.append(_embeddings(model, rng.standard_normal((1, 3, 32, 32), dtype=np.float32)))
    mmd2, threshold = _MetricFamily.created
    assert (mmd2.family.name, threshold.family.name) == ("dino_embedding_drift_mmd2", "dino_embedding_drift_threshold")
    assert mmd2.family.kind == threshold.family.kind == "gauge"
    assert mmd2.labels == threshold.labels == {"model": "dino", "version": "1"}
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
    assert model.drift is None


def test_an_unreadable_reference_does_not_keep_the_model_from_loading(backend, tiny_export, tiny_onnx: Path,
                                                                      tmp_path: Path) -> None:
    written = write_model_repository(tiny_onnx, tmp_path / "repo", RepositoryOptions(flavour="cpu"))
    version_dir = Path(written["version_dir"])
    (version_dir / "drift.npz").write_bytes(b"truncated")
    model = backend.load(version_dir)
    assert model.drift is None and _MetricFamily.created == []
    assert _embeddings(model, np.zeros((1, 3, 32, 32), np.float32)).shape == (1, 64)


def test_one_loaded_version_at_a_time_owns_the_gauges(backend, tiny_export, tiny_onnx: Path, tmp_path: Path) -> None:
    """Versions N and N+1 loaded together (a rollout): one set of families, handed over when N unloads."""

    def version() -> Path:
        written = write_model_repository(tiny_onnx, tmp_path / "repo", RepositoryOptions(flavour="cpu"))
        return Path(written["version_dir"])

    first, second = backend.load(version()), backend.load(version())
    every = backend.module.DRIFT_UPDATE_EVERY
    images = np.zeros((max(first.drift.size, every), 3, 32, 32), np.float32)
    _embeddings(first, images)
    _embeddings(second, images)
    assert [g.labels["version"] for g in _MetricFamily.created] == ["1", "1"]  # version 2 computes, publishes nothing
    first.finalize()
    _embeddings(second, images[:every])
    assert [g.labels["version"] for g in _MetricFamily.created] == ["1", "1", "2", "2"]
    assert _MetricFamily.created[2].values == [pytest.approx(second.drift.value)]
    second.finalize()
