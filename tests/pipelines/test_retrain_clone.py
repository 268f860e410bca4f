"""`retrain check --repo <git URL>`: a check that owns no checkout clones the data repository itself.

The clone is a real `git clone` of a bare repository through a file:// URL; the tracked branch is not
the default one (only origin/<branch> exists in a fresh clone). The KFP host is a closed port, so the
check ends with the trigger pending for exactly the md5 at that branch.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from dino_model.cli.main import main
from dino_model.versioning.clone import is_git_url
from dino_model.versioning.sync import snapshot
from pipelines.retrain import read_state

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t.invalid", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t.invalid"}


def _git(cwd, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, env={**os.environ, **GIT_ENV})


@pytest.mark.parametrize(("repo", "url"), [
    ("https://github.com/dino-mlops/dino-data.git", True), ("file:///srv/data.git", True),
    ("git@github.com:dino-mlops/dino-data.git", True), (".", False), ("/srv/data", False), ("data:v1", False)])
def test_git_urls_are_told_from_paths(repo: str, url: bool) -> None:
    assert is_git_url(repo) is url


def test_check_clones_the_url_and_reads_the_tracked_branch(repo, tmp_path, free_port, capsys, monkeypatch) -> None:
    bare = tmp_path / "data.git"
    _git(tmp_path, "clone", "-q", "--bare", str(repo), str(bare))
    _git(repo, "checkout", "-q", "-b", "dev")
    for key, value in GIT_ENV.items():
        monkeypatch.setenv(key, value)
    version = snapshot(repo, "a data version on dev only")
    _git(repo, "push", "-q", str(bare), "dev")
    state, scratch = tmp_path / "state.json", tmp_path / "scratch"
    code = main(["retrain", "check", "--repo", f"file://{bare}", "--rev", "dev", "--workdir", str(scratch),
                 "--host", f"http://127.0.0.1:{free_port}", "--state", str(state), "--timeout", "30"])
    assert code == 2 and "stays pending" in capsys.readouterr().err
    assert read_state(state).pending_md5 == version.md5
    assert list(scratch.iterdir()) == [], "the clone is removed after the check"


def test_an_unreachable_repository_is_one_line_without_credentials(tmp_path, free_port, capsys) -> None:
    code = main(["retrain", "check", "--repo", f"https://user:s3cret@127.0.0.1:{free_port}/data.git",
                 "--host", f"http://127.0.0.1:{free_port}", "--state", str(tmp_path / "s.json"),
                 "--git-timeout", "20"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dino-mlops: error:")]
    assert code != 0 and len(errors) == 1 and "cannot clone data repository" in errors[0]
    assert "s3cret" not in errors[0] and not (tmp_path / "s.json").exists()
