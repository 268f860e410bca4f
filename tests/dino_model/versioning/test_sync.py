"""Snapshot and checkout on real git + DVC repositories with a local remote, including failures."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dino_model.errors import DataError
from dino_model.versioning import checkout_version, snapshot
from dino_model.versioning.repo import git, open_repo


def _edit(root: Path) -> None:
    """Modify one image, add one, delete one."""
    train = root / "data" / "toy" / "train"
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(train / "a" / "0.png")
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(train / "a" / "new.png")
    (train / "b" / "2.png").unlink()


def _wipe_cache(root: Path) -> None:
    shutil.rmtree(root / ".dvc" / "cache", ignore_errors=True)


@pytest.fixture
def two_versions(repo: Path, fingerprint):
    """v1 and v2 committed and pushed; the workspace holds v2."""
    v1 = snapshot(repo, "data v1")
    fp1 = fingerprint(repo)
    _edit(repo)
    v2 = snapshot(repo, "data v2")
    return repo, v1, fp1, v2, fingerprint(repo)


def test_snapshot_records_commits_and_pushes(repo: Path) -> None:
    v1 = snapshot(repo, "data v1")
    assert v1.md5.endswith(".dir") and v1.nfiles == 6
    assert v1.size == sum(p.stat().st_size for p in (repo / "data").rglob("*.png"))
    assert v1.rev == git(repo, "rev-parse", "HEAD").strip()
    assert git(repo, "log", "-1", "--format=%s").strip() == "data v1"
    assert git(repo, "status", "--porcelain", "data.dvc", ".gitignore") == ""
    remote_dir = repo / ".dvc-remote" / "files" / "md5" / v1.md5[:2] / v1.md5[2:]
    assert remote_dir.is_file()  # the listing reached the remote (DVC pushes it after all files)


def test_snapshot_without_message_leaves_data_dvc_uncommitted(repo: Path) -> None:
    version = snapshot(repo)
    assert version.rev is None
    assert "data.dvc" in git(repo, "status", "--porcelain")


def test_round_trip_old_version_back_from_remote(two_versions, fingerprint) -> None:
    repo, v1, fp1, v2, fp2 = two_versions
    assert v1.md5 != v2.md5 and v2.nfiles == 6
    _wipe_cache(repo)  # everything must come from the remote
    back = checkout_version(repo, v1.rev)
    assert back.md5 == v1.md5 and back.nfiles == v1.nfiles and back.size == v1.size
    assert fingerprint(repo) == fp1  # data/ and data.dvc as they were at v1
    assert (repo / "data.dvc").read_text() == git(repo, "show", f"{v1.rev}:data.dvc")
    again = checkout_version(repo, v2.md5.removesuffix(".dir"))  # by md5, suffix optional
    assert again.rev == v2.rev
    assert fingerprint(repo) == fp2
    assert git(repo, "status", "--porcelain", "data.dvc") == ""


def test_checkout_by_relative_revision(two_versions, fingerprint) -> None:
    repo, v1, fp1, _, _ = two_versions
    assert checkout_version(repo, "HEAD~1").md5 == v1.md5
    assert fingerprint(repo) == fp1


def test_version_only_in_remote_is_found_by_md5(two_versions, fingerprint) -> None:
    repo, _, _, v2, _ = two_versions
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(repo / "data" / "toy" / "train" / "b" / "9.png")
    v3 = snapshot(repo)  # pushed, never committed
    dvc_text_v3 = (repo / "data.dvc").read_text()
    fp3 = fingerprint(repo)
    checkout_version(repo, v2.rev)
    _wipe_cache(repo)
    got = checkout_version(repo, v3.md5)
    assert got.rev is None and got.md5 == v3.md5
    assert (repo / "data.dvc").read_text() == dvc_text_v3  # nfiles and size recomputed exactly as DVC wrote them
    assert fingerprint(repo) == fp3


def test_pull_without_version_restores_a_fresh_checkout(two_versions, fingerprint) -> None:
    repo, _, _, v2, fp2 = two_versions
    shutil.rmtree(repo / "data")
    _wipe_cache(repo)
    assert checkout_version(repo).md5 == v2.md5
    assert fingerprint(repo) == fp2


def _drop_remote(repo: Path) -> None:
    with open_repo(repo) as r, r.config.edit("repo") as conf:
        conf["remote"].clear()
        conf["core"].pop("remote", None)


def test_snapshot_without_remote_changes_nothing(repo: Path, fingerprint) -> None:
    _drop_remote(repo)
    before = fingerprint(repo)
    with pytest.raises(DataError, match="no DVC remote is set.*remote add"):
        snapshot(repo, "v1")
    assert fingerprint(repo) == before and not (repo / "data.dvc").exists()
    with pytest.raises(DataError, match="'nope' is not configured"):
        snapshot(repo, remote="nope")


def test_pull_without_remote_leaves_workspace(two_versions, fingerprint) -> None:
    repo, v1, _, _, fp2 = two_versions
    _wipe_cache(repo)
    _drop_remote(repo)
    with pytest.raises(DataError, match="no DVC remote is set"):
        checkout_version(repo, v1.rev)
    assert fingerprint(repo) == fp2


def test_pull_from_missing_remote_directory(two_versions, fingerprint) -> None:
    repo, v1, _, _, fp2 = two_versions
    _wipe_cache(repo)
    shutil.rmtree(repo / ".dvc-remote")
    with pytest.raises(DataError, match=r"\.dvc-remote does not exist"):
        checkout_version(repo, v1.rev)
    assert fingerprint(repo) == fp2


@pytest.mark.parametrize(("spec", "message"), [
    ("no-such-branch", "neither a git revision"),
    ("0" * 32, "not in the local cache nor in DVC remote 'local'"),
    ("HEAD~2", "has no data.dvc"),  # the commit before data.dvc existed
])
def test_unknown_version(two_versions, spec: str, message: str, fingerprint) -> None:
    repo, _, _, _, fp2 = two_versions
    with pytest.raises(DataError, match=message):
        checkout_version(repo, spec)
    assert fingerprint(repo) == fp2


def test_remote_that_lost_an_object(two_versions, fingerprint) -> None:
    repo, v1, _, _, fp2 = two_versions
    _wipe_cache(repo)
    only_v1 = _objects_only_in(repo, v1.rev, "HEAD")  # b/2.png and the old a/0.png
    assert len(only_v1) == 2
    for md5 in only_v1:
        (repo / ".dvc-remote" / "files" / "md5" / md5[:2] / md5[2:]).unlink()
    with pytest.raises(DataError, match=r"lacks \d+ of the 6 files.*left as they were"):
        checkout_version(repo, v1.rev)
    assert fingerprint(repo) == fp2


def _objects_only_in(repo: Path, rev_a: str, rev_b: str) -> set[str]:
    """md5s of files in version rev_a but not in rev_b (read from the remote's listings)."""
    import json

    def listing(rev: str) -> set[str]:
        md5 = git(repo, "show", f"{rev}:data.dvc").split("md5: ")[1].split()[0]
        raw = (repo / ".dvc-remote" / "files" / "md5" / md5[:2] / md5[2:]).read_text()
        return {entry["md5"] for entry in json.loads(raw)}

    return listing(rev_a) - listing(rev_b)


def test_transfer_interrupted_mid_way(two_versions, monkeypatch: pytest.MonkeyPatch, fingerprint) -> None:
    from dvc.data_cloud import DataCloud
    from fsspec.callbacks import Callback

    repo, v1, fp1, _, fp2 = two_versions
    _wipe_cache(repo)

    class Interrupt(Callback):
        def relative_update(self, inc: int = 1) -> None:
            super().relative_update(inc)
            if self.value >= 2:
                raise ConnectionResetError("simulated network drop")

    original = DataCloud.transfer
    calls = []

    def transfer(self, src, dest, objs, **kwargs):
        calls.append(len(objs))
        kwargs["callback"] = Interrupt()
        return original(self, src, dest, objs, **kwargs)

    monkeypatch.setattr(DataCloud, "transfer", transfer)
    with pytest.raises(DataError, match="was interrupted: simulated network drop.*left as they were"):
        checkout_version(repo, v1.rev)
    assert calls and fingerprint(repo) == fp2
    monkeypatch.undo()
    checkout_version(repo, v1.rev)  # a later pull completes from the partly filled cache
    assert fingerprint(repo) == fp1


def test_failure_while_writing_data_is_rolled_back(two_versions, monkeypatch: pytest.MonkeyPatch,
                                                   fingerprint) -> None:
    """The in-place checkout used where data/ cannot be renamed (a mount point); test_integrity covers the rest."""
    from dvc.repo import Repo

    from dino_model.versioning import sync

    repo, v1, _, _, fp2 = two_versions
    monkeypatch.setattr(sync, "can_swap", lambda root: False)
    original = Repo.checkout
    calls = []

    def broken_checkout(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:  # damage data/ half-way, then fail
            next((Path(self.root_dir) / "data").rglob("*.png")).unlink()
            raise OSError("disk full")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Repo, "checkout", broken_checkout)
    with pytest.raises(DataError, match="disk full.*restored"):
        checkout_version(repo, v1.rev)
    assert len(calls) == 2  # the rollback checked the previous version out again
    assert fingerprint(repo) == fp2


def test_unrecorded_changes_are_not_discarded_without_force(two_versions, fingerprint) -> None:
    repo, v1, fp1, _, _ = two_versions
    (repo / "data" / "toy" / "train" / "a" / "1.png").write_bytes(b"not a png any more")
    changed = fingerprint(repo)
    with pytest.raises(DataError, match="changes that no data version records.*--force"):
        checkout_version(repo, v1.rev)
    assert fingerprint(repo) == changed
    checkout_version(repo, v1.rev, force=True)
    assert fingerprint(repo) == fp1


def test_failed_push_restores_data_dvc(two_versions) -> None:
    repo, _, _, v2, _ = two_versions
    shutil.rmtree(repo / ".dvc-remote")
    (repo / ".dvc-remote").write_text("a file where the remote folder should be")
    (repo / "data" / "toy" / "train" / "a" / "extra.png").write_bytes((repo / "data.dvc").read_bytes())
    dvc_before = (repo / "data.dvc").read_text()
    with pytest.raises(DataError, match="snapshot of .* failed.*restored"):
        snapshot(repo, "v3")
    assert (repo / "data.dvc").read_text() == dvc_before
    assert git(repo, "rev-parse", "HEAD").strip() == v2.rev


def test_pull_of_the_version_in_place_needs_no_remote(repo: Path, fingerprint) -> None:
    v1 = snapshot(repo, "v1")
    fp1 = fingerprint(repo)
    _drop_remote(repo)
    _wipe_cache(repo)
    (repo / "data.dvc").unlink()  # data/ still holds v1: only data.dvc needs to come back
    assert checkout_version(repo, v1.md5) == v1
    assert fingerprint(repo) == fp1
