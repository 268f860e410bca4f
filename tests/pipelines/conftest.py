"""Every pipeline test runs with DVC's site cache under the session's temporary folder and a git identity.

The throw-away git + DVC repositories come from tests/fixtures/versioning.py, the session's trained and
exported tiny model from tests/fixtures/export.py (one training run for the whole session).
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
