"""Which admin key a deploy uses when the local server's key file belongs to another user.

A pipeline step in the project image runs as uid 10001 and sees the checkout through a read-only
mount, the local server's 0600 key file included; it is given the key in $TRITON_ADMIN_KEY. The
lookup runs here as an unprivileged uid (setpriv), the way such a step meets the file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dino_model.serving.admin_key import ADMIN_KEY_ENV, admin_key_path, write_admin_key

REPO_ROOT = Path(__file__).resolve().parents[3]
LOOKUP = "import json, sys; from dino_model.serving.admin_key import find_admin_key; " \
         "print(json.dumps(find_admin_key(sys.argv[1])))"


@pytest.fixture
def foreign_key_file() -> Iterator[Path]:
    """A repository whose key file is root's, mode 0600, in a folder every user may enter."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to read the file as another user")
    base = Path(tempfile.mkdtemp(prefix="admin-key-"))
    try:
        base.chmod(0o755)
        repository = base / "repository"
        repository.mkdir()
        write_admin_key(admin_key_path(repository), "the-local-servers-key")
        yield repository
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _lookup_as_nobody(repository: Path, key: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != ADMIN_KEY_ENV} | {"PYTHONPATH": str(REPO_ROOT)}
    if key is not None:
        env[ADMIN_KEY_ENV] = key
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                           LOOKUP, str(repository)], env=env, capture_output=True, text=True, timeout=120,
                          cwd="/")


def test_a_step_given_the_key_uses_it_past_a_key_file_it_may_not_read(foreign_key_file: Path) -> None:
    result = _lookup_as_nobody(foreign_key_file, "the-key-the-step-was-given")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == "the-key-the-step-was-given"


def test_without_a_given_key_the_unreadable_file_is_named(foreign_key_file: Path) -> None:
    result = _lookup_as_nobody(foreign_key_file, None)
    assert result.returncode != 0
    assert f"cannot read the admin key file {admin_key_path(foreign_key_file)}: Permission denied" in result.stderr
