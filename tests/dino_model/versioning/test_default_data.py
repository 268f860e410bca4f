"""The default data set on a new machine: rebuilt, checked against data.dvc, pushed; then a no-op."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest

from dino_model.versioning import current_version, default_data_root, ensure_default_data
from dino_model.versioning.repo import git

SOURCE = "faces"  # 200 packaged images: the same code path as digits, in a fraction of the time


def _clone(origin: Path, dest: Path) -> Path:
    subprocess.run(["git", "clone", "-q", str(origin), str(dest)], check=True)
    return dest


@pytest.fixture
def origin(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Path:
    """A git repository where ensure_default_data created DVC, the data and data.dvc, then committed."""
    root = tmp_path / "origin"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    with caplog.at_level(logging.INFO, logger="dino_model.versioning"):
        version = ensure_default_data(root, source=SOURCE)
    assert "no data version was recorded" in caplog.text
    assert version.nfiles == 200 and version.rev is None
    assert (default_data_root(root, SOURCE) / "train").is_dir() and (default_data_root(root, SOURCE) / "val").is_dir()
    git(root, "add", "-A")
    git(root, "commit", "-qm", "default data")
    return root


def _no_rebuild(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("materialize must not run")

    monkeypatch.setattr("dino_model.data.materialize.materialize", fail)


def test_second_run_is_a_no_op(origin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dvc_text = (origin / "data.dvc").read_bytes()
    remote_files = sorted((origin / ".dvc-remote").rglob("*"))
    _no_rebuild(monkeypatch)
    version = ensure_default_data(origin, source=SOURCE)
    assert version.rev == git(origin, "rev-parse", "HEAD").strip()
    assert (origin / "data.dvc").read_bytes() == dvc_text
    assert sorted((origin / ".dvc-remote").rglob("*")) == remote_files
    assert git(origin, "status", "--porcelain") == ""


def test_fresh_clone_rebuilds_matching_data(origin: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clone = _clone(origin, tmp_path / "clone")
    assert not (clone / "data").exists() and not (clone / ".dvc-remote").exists()  # neither travels with git
    with caplog.at_level(logging.INFO, logger="dino_model.versioning"):
        version = ensure_default_data(clone, source=SOURCE)
    assert "cannot be pulled" in caplog.text and "rebuilt data matches data.dvc" in caplog.text
    assert version == current_version(clone)
    assert version.md5 == current_version(origin).md5 and version.rev == git(origin, "rev-parse", "HEAD").strip()
    assert git(clone, "status", "--porcelain") == ""  # data.dvc untouched
    md5 = version.md5
    assert (clone / ".dvc-remote" / "files" / "md5" / md5[:2] / md5[2:]).is_file()  # pushed for later pulls


def test_clone_pulls_when_a_remote_has_the_data(origin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dino_model.versioning import add_remote

    clone = _clone(origin, tmp_path / "clone")
    add_remote(clone, "local", str(origin / ".dvc-remote"), local=True)  # this machine's copy of the remote
    _no_rebuild(monkeypatch)
    version = ensure_default_data(clone, source=SOURCE)
    assert version.md5 == current_version(origin).md5
    n_files = sum(1 for p in (clone / "data").rglob("*") if p.is_file())
    assert n_files == 200


def test_mismatch_is_recorded_as_new_version(origin: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clone = _clone(origin, tmp_path / "clone")
    recorded = current_version(origin)
    fake = "0123456789abcdef0123456789abcdef.dir"  # as if another Pillow/zlib had written the PNGs
    (clone / "data.dvc").write_text((clone / "data.dvc").read_text().replace(recorded.md5, fake))
    git(clone, "commit", "-qam", "data.dvc from another machine")
    with caplog.at_level(logging.INFO, logger="dino_model.versioning"):
        version = ensure_default_data(clone, source=SOURCE)
    assert f"recorded {fake}, found {recorded.md5}" in caplog.text and "new data version" in caplog.text
    assert version.md5 == recorded.md5 and version.rev is None
    assert current_version(clone).md5 == recorded.md5
