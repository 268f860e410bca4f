"""The capture hook of the image entry point's first step, outside Triton: the switch, a missing library, a failure.

The hook is loaded from its file, as Triton's stub loads it from the version folder.
"""

from __future__ import annotations

import builtins
import importlib.util
import sys
from pathlib import Path

import pytest

from dino_model.triton.repository import BACKEND_FILES


@pytest.fixture
def hook():
    spec = importlib.util.spec_from_file_location("capture_hook_under_test", BACKEND_FILES / "capture_hook.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _config(**parameters: str) -> dict:
    return {"parameters": {k: {"string_value": v} for k, v in parameters.items()}}


def test_the_environment_wins_over_the_model_parameter(hook) -> None:
    assert not hook.switched_on(_config(), env={})
    assert hook.switched_on(_config(capture_enabled="true"), env={})
    assert not hook.switched_on(_config(capture_enabled="true"), env={"DINO_CAPTURE_ENABLED": "0"})
    assert hook.switched_on(_config(), env={"DINO_CAPTURE_ENABLED": "1"})


def test_a_missing_capture_library_logs_one_error_and_serving_goes_on(hook, monkeypatch) -> None:
    real_import = builtins.__import__

    def no_capture(name, *args, **kwargs):
        if name.startswith("dino_model.capture"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "dino_model.capture", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_capture)
    errors: list[str] = []
    assert hook.open_sampler(_config(), errors.append, env={"DINO_CAPTURE_ENABLED": "1"}) is None
    assert len(errors) == 1 and "install dino-mlops-client" in errors[0]


def test_refused_settings_stop_the_start_with_one_line(hook) -> None:
    from dino_model.errors import ConfigError

    with pytest.raises(ConfigError, match="no store is set"):
        hook.open_sampler(_config(), [].append, env={"DINO_CAPTURE_ENABLED": "1"})
    with pytest.raises(ConfigError, match="environment variable DINO_CAPTURE_RATE"):
        hook.open_sampler(_config(capture_store="/tmp/x"), [].append,
                          env={"DINO_CAPTURE_ENABLED": "1", "DINO_CAPTURE_RATE": "often"})


def test_a_failing_sampler_never_raises_and_logs_once(hook, tmp_path: Path) -> None:
    class Broken:
        def offer(self, *args, **kwargs):
            raise OSError("disk gone")

    errors: list[str] = []
    asked = []
    capture = hook.Capture(Broken(), lambda: asked.append(1) or 3, errors.append, clock=lambda: 0.0)
    for _ in range(5):
        capture.offer([b"x", b"y"])
    assert len(errors) == 1 and "disk gone" in errors[0]
    assert len(asked) == 1  # the served version is asked once per VERSION_TTL_S, not per request


def test_the_served_version_goes_with_each_offered_image(hook, tmp_path: Path) -> None:
    offered = []

    class Recording:
        def offer(self, data, *, model_version, drift_score):
            offered.append((data, model_version, drift_score))

    now = [0.0]
    versions = iter([1, 2])
    capture = hook.Capture(Recording(), lambda: next(versions), [].append, clock=lambda: now[0])
    capture.offer([b"a"])
    now[0] = hook.VERSION_TTL_S
    capture.offer([b"b"])
    assert offered == [(b"a", "1", None), (b"b", "2", None)]


def test_the_drift_score_of_the_served_version_goes_with_each_offered_image(hook) -> None:
    offered = []

    class Recording:
        def offer(self, data, *, model_version, drift_score):
            offered.append((model_version, drift_score))

    scores = {"1": 0.5}
    capture = hook.Capture(Recording(), lambda: 1, [].append, clock=lambda: 0.0, drift_score=scores.get)
    capture.offer([b"a", b"b"])
    assert offered == [("1", 0.5), ("1", 0.5)]
