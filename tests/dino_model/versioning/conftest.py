"""Throw-away git + DVC repositories with a local remote, and fingerprints of a workspace.

Helpers are handed out as fixtures because the suite imports test modules in importlib mode.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dino_model.versioning import init_repo
from dino_model.versioning.repo import git


@pytest.fixture(autouse=True)
def _site_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep DVC's site cache (index, state db) out of /var/tmp/dvc during tests."""
    path = tmp_path_factory.getbasetemp() / "dvc-site-cache"
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(path))
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    return path


@pytest.fixture(autouse=True)
def _git_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    for var, value in (("GIT_AUTHOR_NAME", "Test"), ("GIT_AUTHOR_EMAIL", "test@example.invalid"),
                       ("GIT_COMMITTER_NAME", "Test"), ("GIT_COMMITTER_EMAIL", "test@example.invalid")):
        monkeypatch.setenv(var, value)


def _write_images(folder: Path, counts: dict[str, int], *, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for cls, n in counts.items():
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / cls / f"{i}.png")


def _fingerprint(root: Path) -> dict[str, str]:
    paths = [p for p in (root / "data").rglob("*") if p.is_file()] if (root / "data").exists() else []
    if (root / "data.dvc").exists():
        paths.append(root / "data.dvc")
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


@pytest.fixture
def write_images() -> Callable[..., None]:
    """write_images(folder, {"a": 3}, seed=0): small random 8x8 PNGs in class folders."""
    return _write_images


@pytest.fixture
def fingerprint() -> Callable[[Path], dict[str, str]]:
    """fingerprint(root): sha256 of every file under data/ plus data.dvc (absent files are missing)."""
    return _fingerprint


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository with DVC initialised, a local default remote, and 2 classes x 3 PNGs in data/."""
    root = tmp_path / "project"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    init_repo(root)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "dvc init")
    _write_images(root / "data" / "toy" / "train", {"a": 3, "b": 3})
    return root
