"""The drift step's latest window handed to the capture step (python_backend/drift_share.py), with hand-made values.

The module is loaded from its file, as Triton's stub loads it from the version folder. The score is
mmd2 / threshold of the served version's latest window; there is none before a window, for another
version, or for a record older than MAX_AGE_S; the reader looks at the file at most once a second.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from dino_model.triton.repository import BACKEND_FILES


@pytest.fixture
def share():
    spec = importlib.util.spec_from_file_location("drift_share_under_test", BACKEND_FILES / "drift_share.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_file_is_named_after_the_server_and_the_model(share, tmp_path: Path) -> None:
    assert share.share_path("dino", tmp_path, 42) == tmp_path / "dino-drift-42-dino.json"
    assert share.share_path("dino").name == f"dino-drift-{os.getppid()}-dino.json"


def test_a_window_is_written_whole_with_its_ratio(share, tmp_path: Path) -> None:
    path = tmp_path / "w.json"
    share.write_window(path, share.window_record(3, 0.02, 0.008, now=100.0))
    assert json.loads(path.read_text()) == {"version": "3", "mmd2": 0.02, "threshold": 0.008,
                                            "ratio": pytest.approx(2.5), "time": 100.0}
    assert [p.name for p in tmp_path.iterdir()] == ["w.json"]  # no temporary left behind
    share.remove_window(path)
    share.remove_window(path)  # already gone: nothing to do
    assert not path.exists()


def test_the_reader_scores_the_served_version_only_and_forgets_old_windows(share, tmp_path: Path) -> None:
    path, wall = tmp_path / "w.json", [1000.0]
    reader = share.WindowReader(path, clock=iter(range(0, 100, 2)).__next__, wall_clock=lambda: wall[0])
    assert reader.score("1") is None  # no window yet
    share.write_window(path, share.window_record("1", 0.03, 0.01, now=1000.0))
    assert reader.score("1") == pytest.approx(3.0)
    assert reader.score("2") is None  # another version's window
    wall[0] = 1000.0 + share.MAX_AGE_S + 1
    assert reader.score("1") is None  # too old: the drift step stopped sharing
    share.remove_window(path)
    assert reader.score("1") is None


def test_the_reader_looks_at_the_file_at_most_once_a_second(share, tmp_path: Path) -> None:
    path, now = tmp_path / "w.json", [0.0]
    reader = share.WindowReader(path, clock=lambda: now[0], wall_clock=lambda: 0.0)
    share.write_window(path, share.window_record("1", 0.01, 0.01, now=0.0))
    assert reader.score("1") == pytest.approx(1.0)
    share.write_window(path, share.window_record("1", 0.02, 0.01, now=0.0))
    os.utime(path, ns=(1, 1))  # a new mtime, whatever the filesystem's resolution
    now[0] = share.REREAD_S / 2
    assert reader.score("1") == pytest.approx(1.0)  # not looked at again yet
    now[0] = share.REREAD_S
    assert reader.score("1") == pytest.approx(2.0)


def test_an_unreadable_record_scores_nothing(share, tmp_path: Path) -> None:
    path = tmp_path / "w.json"
    path.write_text("{half")
    assert share.WindowReader(path, wall_clock=lambda: 0.0).score("1") is None
