"""Repository set-up without git staging, root discovery, the site cache, and a quiet stdout."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from dino_model.errors import DataError
from dino_model.versioning import find_repo_root, init_repo, resolve_version, snapshot
from dino_model.versioning import repo as repo_module
from dino_model.versioning.repo import git, resolve_site_cache_dir


def test_init_stages_nothing_and_ignores_the_remote(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    init_repo(tmp_path)
    assert git(tmp_path, "diff", "--cached", "--name-only") == ""  # `dvc init` would have run `git add`
    untracked = set(git(tmp_path, "status", "--porcelain", "--untracked-files=all").split())
    assert {".dvc/.gitignore", ".dvc/config", ".dvcignore", ".gitignore"} <= untracked
    assert "/.dvc-remote/" in (tmp_path / ".gitignore").read_text().splitlines()
    assert ".DS_Store" in (tmp_path / ".dvcignore").read_text()
    assert (tmp_path / ".dvc" / ".gitignore").read_text().split() == ["/config.local", "/tmp", "/cache"]
    with pytest.raises(DataError, match="already exists"):
        init_repo(tmp_path)


def test_init_respects_an_existing_ignore_rule(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("/data/\n/.dvc-remote/\n")
    init_repo(tmp_path)
    assert (tmp_path / ".gitignore").read_text() == "/data/\n/.dvc-remote/\n"


def test_repository_without_git(tmp_path: Path, write_images) -> None:
    init_repo(tmp_path)
    assert "no_scm = True" in (tmp_path / ".dvc" / "config").read_text()
    write_images(tmp_path / "data" / "x", {"a": 2})
    version = snapshot(tmp_path)
    assert version.rev is None and version.nfiles == 2
    assert resolve_version(tmp_path, version.md5.removesuffix(".dir")).md5 == version.md5
    with pytest.raises(DataError, match="not a git repository; name the version by its md5"):
        resolve_version(tmp_path, "HEAD")
    with pytest.raises(DataError, match="not a git repository"):
        snapshot(tmp_path, "message")


def test_find_repo_root(repo: Path, tmp_path: Path) -> None:
    assert find_repo_root(repo / "data" / "toy") == repo
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    with pytest.raises(DataError, match="no DVC repository at or above"):
        find_repo_root(outside)


def test_site_cache_dir_order(repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_site_cache_dir(repo, tmp_path / "explicit") == tmp_path / "explicit"
    assert resolve_site_cache_dir(repo) is None  # DVC_SITE_CACHE_DIR is set: DVC reads it itself
    monkeypatch.delenv("DVC_SITE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(repo_module, "DEFAULT_SITE_CACHE", tmp_path / "var-tmp-dvc")
    assert resolve_site_cache_dir(repo) is None  # writable default: DVC's own choice
    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    assert resolve_site_cache_dir(repo) == tmp_path / "xdg" / "dino-mlops" / "dvc-site"


def test_site_cache_is_used(repo: Path, _site_cache: Path) -> None:
    snapshot(repo)
    assert any((_site_cache / "repo").iterdir())  # DVC's state/index went where DVC_SITE_CACHE_DIR says

