"""Every test here runs with DVC's site cache under the session's temporary folder and a git identity.

The repositories and helpers (`repo`, `write_images`, `fingerprint`) come from tests/fixtures/versioning.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _site_cache(dvc_site_cache: Path) -> Path:
    return dvc_site_cache


@pytest.fixture(autouse=True)
def _git_identity(git_identity: None) -> None:
    return git_identity
