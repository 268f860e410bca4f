"""Data integrity on real git + DVC repositories: corrupt remote objects, pulls killed with SIGKILL, secrets' mode.

The pulls that are killed are real `dino-mlops data pull` processes. They are stopped either at a named
phase (DINO_DATA_PAUSE_AT, switch.PHASES) or the moment the test sees data.dvc or data/ change on
disk, then killed with SIGKILL; the next command must find one whole version, recorded by data.dvc.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import queue
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dino_model.errors import DataError
from dino_model.versioning import add_remote, checkout_version, snapshot, status
from dino_model.versioning.remotes import set_default_remote
from dino_model.versioning.repo import git, open_repo
from dino_model.versioning.store import workspace_tree
from dino_model.versioning.switch import PAUSE_ENV, SWITCH_DIR

SOURCE_ROOT = Path(__file__).resolve().parents[3]
MD5_DIR = Path(".dvc-remote") / "files" / "md5"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != PAUSE_ENV}
    return {**env, "PYTHONPATH": str(SOURCE_ROOT), **extra}


def _cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dino_model.cli", "data", *args], cwd=root, env=_env(),
                          capture_output=True, text=True, check=False, timeout=120)


def _wipe_cache(root: Path) -> None:
    shutil.rmtree(root / ".dvc" / "cache", ignore_errors=True)


def _remote_object(root: Path, md5: str) -> Path:
    return root / MD5_DIR / md5[:2] / md5[2:]


def _listing(root: Path, md5: str) -> dict[str, str]:
    """relpath -> md5 of a version, read from the remote."""
    return {e["relpath"]: e["md5"] for e in json.loads(_remote_object(root, md5).read_text())}


def _overwrite(path: Path, data: bytes) -> None:
    path.chmod(0o644)  # DVC keeps objects read-only
    path.write_bytes(data)


def _cache_is_sound(root: Path) -> list[str]:
    """Cache files whose bytes do not hash to their name (empty when every object is sound)."""
    bad = []
    for path in (root / ".dvc" / "cache" / "files" / "md5").rglob("*"):
        if path.is_file():
            oid = path.parent.name + path.name
            if hashlib.md5(path.read_bytes()).hexdigest() != oid.removesuffix(".dir"):
                bad.append(oid)
    return bad


@pytest.fixture
def versions(repo: Path, write_images, fingerprint):
    """v1 (6 images + 60 in class c) and v2 (c removed, one image edited), committed and pushed; data/ holds v2."""
    write_images(repo / "data" / "toy" / "train", {"c": 60}, seed=1)
    v1 = snapshot(repo, "data v1")
    fp1 = fingerprint(repo)
    shutil.rmtree(repo / "data" / "toy" / "train" / "c")
    (repo / "data" / "toy" / "train" / "a" / "0.png").write_bytes(b"edited in v2")
    v2 = snapshot(repo, "data v2")
    return repo, v1, fp1, v2, fingerprint(repo)


# --- corrupt objects in the remote -------------------------------------------------------------------------

def test_corrupt_object_is_refused_and_nothing_changes(versions, fingerprint) -> None:
    repo, v1, _, v2, fp2 = versions
    only_v1 = sorted(set(_listing(repo, v1.md5).items()) - set(_listing(repo, v2.md5).items()))
    relpath, md5 = only_v1[0]
    good = _remote_object(repo, md5).read_bytes()
    _overwrite(_remote_object(repo, md5), good[:-4] + bytes(b ^ 0xFF for b in good[-4:]))  # same size
    _wipe_cache(repo)
    proc = _cli(repo, "pull", v1.rev)
    assert proc.returncode == 2 and proc.stdout == ""
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("dino-mlops: error: DVC remote 'local'") and "corrupt" in last
    assert f"data/{relpath}" in last and md5 in last and "left as they were" in last
    assert fingerprint(repo) == fp2  # data/ and data.dvc byte-identical
    assert not (repo / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]).exists()
    assert _cache_is_sound(repo) == []
    state = json.loads(_cli(repo, "status").stdout)
    assert (state["version"]["md5"], state["workspace"]) == (v2.md5, "clean")
    _overwrite(_remote_object(repo, md5), good)  # once the remote is repaired, the same pull works
    assert checkout_version(repo, v1.rev).md5 == v1.md5


def test_corrupt_object_on_a_fresh_checkout(versions, fingerprint) -> None:
    """The plain `data pull` of a new clone: data/ absent, cache empty, one object bad in the remote."""
    repo, _, _, v2, _ = versions
    relpath, md5 = sorted(_listing(repo, v2.md5).items())[0]
    _overwrite(_remote_object(repo, md5), b"not the image that was pushed")
    shutil.rmtree(repo / "data")
    _wipe_cache(repo)
    before = fingerprint(repo)
    with pytest.raises(DataError, match=rf"DVC remote 'local' .*corrupt.*data/{relpath} \(md5 {md5}"):
        checkout_version(repo)
    assert fingerprint(repo) == before and not (repo / "data").exists()
    assert _cache_is_sound(repo) == []
    assert status(repo)["workspace"] == "missing"


@pytest.mark.parametrize("damage", ["bytes", "valid-json"])
def test_corrupt_listing_is_refused(versions, fingerprint, damage: str) -> None:
    repo, v1, _, _, fp2 = versions
    path = _remote_object(repo, v1.md5)
    raw = path.read_text()
    if damage == "bytes":
        _overwrite(path, raw[:10].encode() + b"\x00garbage" + raw[18:].encode())
    else:  # still a well-formed listing, but not the one whose md5 names it: a file renamed
        _overwrite(path, raw.replace('"toy/train/a/1.png"', '"toy/train/a/9.png"').encode())
    _wipe_cache(repo)
    with pytest.raises(DataError, match=rf"DVC remote 'local' .*corrupt.*the file listing \(md5 {v1.md5}"):
        checkout_version(repo, v1.rev)
    assert fingerprint(repo) == fp2
    assert not (repo / ".dvc" / "cache" / "files" / "md5" / v1.md5[:2] / v1.md5[2:]).exists()
    assert _cache_is_sound(repo) == []


# --- pulls killed with SIGKILL -----------------------------------------------------------------------------

class _Pull:
    """A real `dino-mlops data pull` process whose stderr is read line by line in the background."""

    def __init__(self, root: Path, version: str, pause_at: str | None = None) -> None:
        extra = {PAUSE_ENV: pause_at} if pause_at else {}
        self.proc = subprocess.Popen([sys.executable, "-m", "dino_model.cli", "data", "pull", version], cwd=root,
                                     env=_env(**extra), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.put(line)

    def wait_for(self, needle: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.seen.append(self.lines.get(timeout=0.1))
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
                continue
            if needle in self.seen[-1]:
                return
        raise AssertionError(f"the pull never logged {needle!r} (exit {self.proc.poll()}): {''.join(self.seen)}")

    def kill(self) -> int | None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        return self.proc.wait(timeout=30)


def _dir_signature(data_dir: Path) -> list[tuple[str, int, int]]:
    """Inode and mtime of data/ and every folder in it: a file added, removed or replaced changes one."""
    try:
        dirs = [data_dir, *(p for p in data_dir.rglob("*") if p.is_dir())]
        return sorted((str(d), d.stat().st_ino, d.stat().st_mtime_ns) for d in dirs)
    except OSError:  # a folder vanished while it was listed: that is a change too
        return []


def _kill_on_change(root: Path, version: str, watch: str) -> int | None:
    """Start a pull and SIGKILL it the moment data.dvc (watch="data.dvc") or data/ (watch="data") changes."""
    dvc_file, data_dir = root / "data.dvc", root / "data"
    probe: Callable[[], object] = dvc_file.read_bytes if watch == "data.dvc" else lambda: _dir_signature(data_dir)
    before = probe()
    pull = _Pull(root, version)
    deadline = time.monotonic() + 60
    while pull.proc.poll() is None and time.monotonic() < deadline:
        if probe() != before:
            return pull.kill()
        time.sleep(0.0005)
    return pull.kill()


def _next_command_finds(root: Path, tmp_path: Path, md5: str, *, cli: bool = True) -> dict:
    """`data status` completes whatever the kill left and reports `md5`, clean; data/ really hashes to it.

    With `cli=False` the status is taken in this process (the same code, without starting an interpreter).
    """
    if cli:
        proc = _cli(root, "status")
        assert proc.returncode == 0, proc.stderr
        state = json.loads(proc.stdout)
    else:
        state = status(root)
    assert (state["version"]["md5"], state["workspace"]) == (md5, "clean"), state
    assert not (root / SWITCH_DIR).exists()
    assert (root / "data.dvc").read_text().split("md5: ")[1].split()[0] == md5
    fresh = tmp_path / f"site-cache-{time.monotonic_ns()}"  # a new state db: every file is hashed from its bytes
    with open_repo(root, site_cache_dir=fresh) as repo:
        assert workspace_tree(repo, root / "data").hash_info.value == md5
    return state


def test_pull_killed_at_each_phase(versions, fingerprint, tmp_path: Path) -> None:
    """Before the journal is written the old version stays; from then on the new one is what the next command finds."""
    from dino_model.versioning.switch import PHASES

    repo, v1, fp1, v2, fp2 = versions
    for number, phase in enumerate(PHASES):
        _wipe_cache(repo)  # the fetch phases then have something to fetch
        pull = _Pull(repo, v1.rev, pause_at=phase)
        pull.wait_for(f"pausing at data switch phase {phase!r}")
        assert pull.kill() == -signal.SIGKILL
        switched = number >= PHASES.index("journal-written")
        if not (repo / SWITCH_DIR / "journal.json").exists():  # no switch under way: one whole version on disk
            assert fingerprint(repo) == (fp1 if switched else fp2), phase
        state = _next_command_finds(repo, tmp_path, v1.md5 if switched else v2.md5, cli=number % 2 == 0)
        assert state["in_cache"] or not switched  # v2 left the cache with _wipe_cache; v1 was fetched
        assert fingerprint(repo) == (fp1 if switched else fp2), phase
        if not switched:
            assert checkout_version(repo, v1.rev).md5 == v1.md5 and fingerprint(repo) == fp1  # a later pull works
        checkout_version(repo, v2.rev)
        assert fingerprint(repo) == fp2


@pytest.mark.parametrize("watch", ["data.dvc", "data"])
def test_pull_killed_the_moment_the_workspace_changes(versions, fingerprint, tmp_path: Path, watch: str) -> None:
    """Killed as soon as data.dvc, or any folder of data/, changes: a half-written data/ must never be left."""
    repo, v1, fp1, _, _ = versions
    _wipe_cache(repo)
    assert _kill_on_change(repo, v1.rev, watch) == -signal.SIGKILL
    _next_command_finds(repo, tmp_path, v1.md5)
    assert fingerprint(repo) == fp1


def test_failure_while_staging_leaves_the_workspace(versions, fingerprint, monkeypatch: pytest.MonkeyPatch) -> None:
    from dino_model.versioning import switch

    repo, v1, fp1, _, fp2 = versions
    original = switch._stage

    def disk_full(repo_, tree, staging: Path, *, reuse) -> None:
        (staging / "partial.png").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(switch, "_stage", disk_full)
    with pytest.raises(DataError, match="No space left on device; data/ and data.dvc were left as they were"):
        checkout_version(repo, v1.rev)
    assert fingerprint(repo) == fp2 and not (repo / SWITCH_DIR).exists()
    monkeypatch.setattr(switch, "_stage", original)
    unchanged = repo / "data" / "toy" / "train" / "b" / "0.png"
    inode = unchanged.stat().st_ino
    checkout_version(repo, v1.rev)
    assert fingerprint(repo) == fp1
    assert unchanged.stat().st_ino == inode  # a file both versions hold is reused, not copied again


def test_refused_rename_puts_data_back(versions, fingerprint, monkeypatch: pytest.MonkeyPatch) -> None:
    """data/ was moved aside, then renaming the staged copy into place fails: the old data/ comes back."""
    repo, v1, _, _, fp2 = versions
    original = Path.rename

    def rename(self: Path, target):
        if self.name == "new" and Path(target) == repo / "data":
            raise PermissionError(13, "Permission denied", str(target))
        return original(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(DataError, match="Permission denied.*data/ and data.dvc were left as they were"):
        checkout_version(repo, v1.rev)
    monkeypatch.undo()
    assert fingerprint(repo) == fp2 and not (repo / SWITCH_DIR).exists()
    assert status(repo)["workspace"] == "clean"


def test_leftover_staging_is_removed_and_a_pull_in_progress_is_left_alone(versions, tmp_path: Path) -> None:
    repo, v1, _, v2, _ = versions
    pull = _Pull(repo, v1.rev, pause_at="staged")  # holds the repository lock while it waits
    pull.wait_for("pausing at data switch phase 'staged'")
    proc = _cli(repo, "status")
    assert proc.returncode == 2 and "another process is working on the DVC repository" in proc.stderr
    assert (repo / SWITCH_DIR / "new").is_dir()  # the live pull's staging was not touched
    assert pull.kill() == -signal.SIGKILL
    _next_command_finds(repo, tmp_path, v2.md5)


# --- .dvc/config.local holds secrets ------------------------------------------------------------------------

def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def world_readable_umask():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_stored_credentials_are_private(repo: Path, monkeypatch: pytest.MonkeyPatch, world_readable_umask) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")
    add_remote(repo, "minio", "s3://bucket/dvc", endpoint_url="http://minio:9000", store_credentials=True)
    local = repo / ".dvc" / "config.local"
    assert _mode(local) == 0o600
    parser = configparser.ConfigParser()
    parser.read(local)
    assert parser["'remote \"minio\"'"]["secret_access_key"] == "s3cr3t-value"


@pytest.mark.parametrize("how", ["remote add --local", "remote default --local"])
def test_an_existing_config_local_is_tightened(repo: Path, world_readable_umask, how: str) -> None:
    local = repo / ".dvc" / "config.local"
    local.write_text("['remote \"old\"']\n    url = s3://bucket/old\n    secret_access_key = kept-secret\n")
    local.chmod(0o644)
    if how == "remote add --local":
        proc = _cli(repo, "remote", "add", "shared", str(repo / "shared-remote"), "--local")
        assert proc.returncode == 0, proc.stderr
    else:
        set_default_remote(repo, "old", local=True)
    assert _mode(local) == 0o600
    assert "kept-secret" in local.read_text()
    assert git(repo, "check-ignore", ".dvc/config.local").strip() == ".dvc/config.local"
