"""Parsing data.dvc and resolving versions from git revisions and md5s."""

from __future__ import annotations

from pathlib import Path

import pytest

from dino_model.errors import DataError
from dino_model.versioning import current_version, history, resolve_version, snapshot
from dino_model.versioning.repo import git
from dino_model.versioning.versions import DataVersion, looks_like_md5, normalise_md5, parse_dvc_file

DVC3 = """outs:
- md5: 21d688e8268f6169050b1ffe22370259.dir
  size: 5
  nfiles: 5
  hash: md5
  path: data
"""


def test_parse_dvc3_file() -> None:
    v = parse_dvc_file(DVC3, source="x")
    assert v == DataVersion("21d688e8268f6169050b1ffe22370259.dir", 5, 5, None, "data")
    assert v.dvc_text() == DVC3  # the same layout DVC writes, so a rewrite is byte-identical
    assert v.short == "21d688e8"


@pytest.mark.parametrize(("text", "message"), [
    ("stages: {}\n", "not a DVC file"),
    ("outs:\n- md5: 0123456789abcdef0123456789abcdef\n  hash: md5\n  path: x.png\n", "single file"),
    (DVC3.replace("  hash: md5\n", ""), "DVC 2"),
    ("outs: [", "not a DVC file"),
])
def test_parse_rejects(text: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        parse_dvc_file(text, source="data.dvc")


def test_md5_forms() -> None:
    assert looks_like_md5("21D688E8268F6169050B1FFE22370259")
    assert looks_like_md5("21d688e8268f6169050b1ffe22370259.dir")
    assert not looks_like_md5("21d688e8")  # a short git sha, not an md5
    assert normalise_md5("21D688E8268F6169050B1FFE22370259") == "21d688e8268f6169050b1ffe22370259.dir"


def test_history_and_resolution(repo: Path) -> None:
    with pytest.raises(DataError, match="no data version is recorded yet"):
        current_version(repo)
    v1 = snapshot(repo, "first")
    (repo / "data" / "toy" / "train" / "a" / "0.png").write_bytes(b"changed")
    v2 = snapshot(repo, "second")
    entries = history(repo)
    assert [(e.version.md5, e.subject) for e in entries] == [(v2.md5, "second"), (v1.md5, "first")]
    assert entries[0].version.rev == v2.rev and entries[1].version.nfiles == 6
    assert history(repo, max_count=1)[0].version.md5 == v2.md5
    assert current_version(repo) == v2
    assert resolve_version(repo, None) == v2
    assert resolve_version(repo, "HEAD~1") == v1
    assert resolve_version(repo, v1.md5.upper().removesuffix(".DIR")).rev == v1.rev
    unknown = "f" * 32
    assert resolve_version(repo, unknown) == DataVersion(md5=unknown + ".dir")  # settled against the remote later
    with pytest.raises(DataError, match="neither a git revision"):
        resolve_version(repo, "v9")


def test_uncommitted_version_has_no_rev(repo: Path) -> None:
    snapshot(repo, "first")
    (repo / "data" / "toy" / "train" / "b" / "0.png").unlink()
    v = snapshot(repo)
    assert v.rev is None and current_version(repo).md5 == v.md5
    assert git(repo, "show", "HEAD:data.dvc") != (repo / "data.dvc").read_text()
