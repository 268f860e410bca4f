"""Data versions fetched as a pipeline step fetches them: a git URL and a DVC remote, nothing else."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from dino_model.errors import DataError
from dino_model.versioning.clone import fetch_data_version, git_environment, public_url
from dino_model.versioning.repo import git
from dino_model.versioning.sync import snapshot


@pytest.fixture
def published(repo: Path, tmp_path: Path) -> tuple[str, Path]:
    """The repository's first data version, pushed to a bare git repository and its DVC remote."""
    snapshot(repo, "first data version")
    bare = tmp_path / "data.git"
    git(tmp_path, "clone", "-q", "--bare", str(repo), str(bare))
    git(repo, "remote", "add", "origin", str(bare))
    return f"file://{bare}", repo / ".dvc-remote"


def test_a_version_arrives_from_its_git_url_and_remote(published, repo, fingerprint, tmp_path):
    url, remote = published
    root, version = fetch_data_version(url, "", tmp_path / "step", remote_url=str(remote))
    assert fingerprint(root) == fingerprint(repo)
    assert version.rev == git(repo, "rev-parse", "HEAD").strip()
    assert version.md5.endswith(".dir") and version.nfiles == 6


def test_a_second_version_and_an_older_one_by_md5(published, repo, write_images, fingerprint, tmp_path):
    url, remote = published
    first = fetch_data_version(url, "", tmp_path / "a", remote_url=str(remote))[1]
    write_images(repo / "data" / "toy" / "train", {"c": 2}, seed=1)
    snapshot(repo, "second data version")
    git(repo, "push", "-q", "origin", "main")
    root, second = fetch_data_version(url, "", tmp_path / "b", remote_url=str(remote))
    assert second.md5 != first.md5 and second.nfiles == 8 and fingerprint(root) == fingerprint(repo)
    assert second.rev == git(repo, "rev-parse", "HEAD").strip()
    root, again = fetch_data_version(url, first.md5, tmp_path / "c", remote_url=str(remote))
    assert (again.md5, again.rev) == (first.md5, first.rev)
    assert len([p for p in (root / "data").rglob("*.png")]) == 6


def test_no_fallback_when_the_remote_lacks_the_version(published, tmp_path):
    url, _ = published
    empty = tmp_path / "empty-remote"
    empty.mkdir()
    with pytest.raises(DataError, match="missing|not in|cannot"):
        fetch_data_version(url, "", tmp_path / "step", remote_url=str(empty))


def test_an_unknown_revision_and_an_unreachable_repository_are_one_line(published, tmp_path):
    url, remote = published
    with pytest.raises(DataError):
        fetch_data_version(url, "no-such-branch", tmp_path / "a", remote_url=str(remote))
    with pytest.raises(DataError, match=r"cannot clone data repository https://127\.0\.0\.1:1/x\.git") as info:
        fetch_data_version("https://user:s3cret@127.0.0.1:1/x.git", "", tmp_path / "b")
    assert "s3cret" not in str(info.value)
    with pytest.raises(DataError, match="no data repository given"):
        fetch_data_version("", "", tmp_path / "c")


def test_the_token_reaches_git_only_through_its_credential_helper(monkeypatch):
    monkeypatch.setenv("DINO_GIT_USERNAME", "ci-bot")
    monkeypatch.setenv("DINO_GIT_TOKEN", "tok-123")
    out = subprocess.run(["git", "credential", "fill"], input="protocol=https\nhost=git.example.com\n\n",
                         env=git_environment(), capture_output=True, text=True, check=True).stdout
    assert "username=ci-bot" in out and "password=tok-123" in out
    assert "tok-123" not in " ".join(git_environment()[k] for k in ("GIT_CONFIG_VALUE_0",))


def test_public_url_drops_credentials():
    assert public_url("https://u:p@host/repo.git") == "https://host/repo.git"
    assert public_url("file:///srv/data.git") == "file:///srv/data.git"
