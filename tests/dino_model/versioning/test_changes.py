"""Diffs between versions and the workspace, and the status report."""

from __future__ import annotations

import shutil
from pathlib import Path

from dino_model.versioning import diff, snapshot, status
from dino_model.versioning.changes import compare


def test_compare_by_hand() -> None:
    d = compare({"a": "1", "b": "2", "c": "3"}, {"b": "2", "c": "9", "d": "4"}, old_name="x", new_name="y")
    assert (d.added, d.removed, d.modified) == (["d"], ["a"], ["c"])
    assert d.to_dict(limit=0)["n_modified"] == 1 and d.to_dict(limit=0)["modified"] == []


def test_diff_between_versions_and_workspace(repo: Path) -> None:
    v1 = snapshot(repo, "v1")
    train = repo / "data" / "toy" / "train"
    (train / "a" / "0.png").write_bytes(b"edited")
    (train / "c").mkdir()
    (train / "c" / "0.png").write_bytes(b"new class")
    (train / "b" / "1.png").unlink()
    ws = diff(repo)  # recorded version -> workspace
    assert ws.added == ["data/toy/train/c/0.png"]
    assert ws.removed == ["data/toy/train/b/1.png"]
    assert ws.modified == ["data/toy/train/a/0.png"]
    v2 = snapshot(repo, "v2")
    assert not diff(repo).changed
    between = diff(repo, v1.rev, v2.md5)
    assert (between.added, between.removed, between.modified) == (ws.added, ws.removed, ws.modified)
    backwards = diff(repo, "HEAD", "HEAD~1")
    assert backwards.added == ws.removed and backwards.removed == ws.added
    shutil.rmtree(repo / ".dvc" / "cache")  # listings then come from the remote (no file content)
    assert diff(repo, v1.rev, v2.rev).modified == ws.modified


def test_status_reports_changes_cache_and_remote(repo: Path) -> None:
    assert status(repo) == {"version": None, "committed": False, "workspace": "untracked", "remote": "local"}
    v1 = snapshot(repo, "v1")
    clean = status(repo)
    assert clean["version"]["md5"] == v1.md5 and clean["committed"] and clean["workspace"] == "clean"
    assert clean["in_cache"] and clean["in_remote"] and clean["remote"] == "local"
    (repo / "data" / "toy" / "train" / "a" / "2.png").unlink()
    modified = status(repo)
    assert modified["workspace"] == "modified"
    assert modified["changes"]["removed"] == ["data/toy/train/a/2.png"]
    shutil.rmtree(repo / "data")
    shutil.rmtree(repo / ".dvc-remote")
    missing = status(repo)
    assert missing["workspace"] == "missing" and missing["in_remote"] is False
