"""Data versions: what `data.dvc` records, and resolving a version from a git revision or an md5.

The `.dvc` file *is* the version: `outs[0].md5` is the md5 of the JSON listing
of every file in `data/` (hence its `.dir` suffix), with `nfiles` and `size` beside it. A version is
named either by a git revision, read through `git show REV:data.dvc`, or by that md5, looked up in the
history of `data.dvc`. An md5 that no commit records is still a version if the remote holds its
listing; `sync.checkout_version` settles that case.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from dino_model.errors import DataError
from dino_model.versioning.repo import DATA_DIR, DVC_FILE, git, has_git

MD5_PATTERN = re.compile(r"^[0-9a-f]{32}(\.dir)?$")


@dataclass(frozen=True)
class DataVersion:
    """One version of the tracked directory.

    Attributes:
        md5: md5 of the directory listing, ending in `.dir` (the identity of the version).
        nfiles: number of files; None when not yet known (a version found only in the remote).
        size: total bytes of the files; None when not yet known.
        rev: the git commit whose data.dvc records it; None for a version in the workspace only
            (not committed) or found only in the remote.
        path: the tracked directory, relative to the repository root.
    """

    md5: str
    nfiles: int | None = None
    size: int | None = None
    rev: str | None = None
    path: str = DATA_DIR

    @property
    def short(self) -> str:
        return self.md5[:8]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def dvc_text(self) -> str:
        """The data.dvc content that records this version (DVC 3 layout)."""
        out: dict[str, Any] = {"md5": self.md5}
        if self.size is not None:
            out["size"] = self.size
        if self.nfiles is not None:
            out["nfiles"] = self.nfiles
        out |= {"hash": "md5", "path": self.path}
        return yaml.safe_dump({"outs": [out]}, sort_keys=False)


@dataclass(frozen=True)
class LogEntry:
    """A commit that changed data.dvc, with the version it records."""

    version: DataVersion
    date: str
    subject: str


def normalise_md5(md5: str) -> str:
    """`abc...` or `abc....dir` -> `abc....dir` (lower case)."""
    md5 = md5.strip().lower()
    return md5 if md5.endswith(".dir") else f"{md5}.dir"


def looks_like_md5(spec: str) -> bool:
    return bool(MD5_PATTERN.match(spec.strip().lower()))


def parse_dvc_file(text: str, *, source: str, rev: str | None = None) -> DataVersion:
    """The version recorded by a data.dvc text; `source` names where it came from, for errors."""
    try:
        doc = yaml.safe_load(text)
        out = doc["outs"][0]
        md5 = str(out["md5"])
    except (yaml.YAMLError, KeyError, IndexError, TypeError) as exc:
        raise DataError(f"{source} is not a DVC file with an `outs:` entry carrying an md5 ({exc!r})") from exc
    if not md5.endswith(".dir"):
        raise DataError(f"{source} tracks a single file (md5 {md5}), not a directory; track the data/ folder")
    if out.get("hash") != "md5":
        raise DataError(f"{source} was written by DVC 2 (no `hash: md5`); re-add the data with DVC 3 "
                        "(`dino-mlops data snapshot`) so that the md5 matches the cache layout")
    return DataVersion(md5=md5, nfiles=out.get("nfiles"), size=out.get("size"), rev=rev,
                       path=str(out.get("path", DATA_DIR)))


def recorded_version(root: str | Path) -> DataVersion | None:
    """The version data.dvc in the working tree records, or None when there is no data.dvc.

    `rev` is HEAD when HEAD's data.dvc records the same md5 (the version is committed), else None.
    """
    path = Path(root) / DVC_FILE
    if not path.exists():
        return None
    version = parse_dvc_file(path.read_text(), source=str(path))
    if has_git(root):
        head = git(root, "rev-parse", "--verify", "--quiet", "HEAD", check=False).strip()
        committed = git(root, "show", f"HEAD:{DVC_FILE}", check=False) if head else ""
        if committed and parse_dvc_file(committed, source=f"HEAD:{DVC_FILE}").md5 == version.md5:
            return DataVersion(version.md5, version.nfiles, version.size, head, version.path)
    return version


def current_version(root: str | Path) -> DataVersion:
    """The version data.dvc records; DataError when the repository has no data.dvc yet."""
    version = recorded_version(root)
    if version is None:
        raise DataError(f"{Path(root) / DVC_FILE} does not exist: no data version is recorded yet; "
                        "create one with `dino-mlops data snapshot` (or `dino-mlops data ensure`)")
    return version


def version_at(root: str | Path, rev: str) -> DataVersion:
    """The version recorded by data.dvc at git revision `rev`."""
    sha = git(root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False).strip()
    if not sha:
        raise DataError(f"unknown data version {rev!r}: it is neither a git revision of {root} nor a data md5 "
                        "(32 hex digits, optionally ending in .dir); list versions with `dino-mlops data log`")
    text = git(root, "show", f"{sha}:{DVC_FILE}", check=False)
    if not text:
        raise DataError(f"git revision {rev!r} ({sha[:12]}) has no {DVC_FILE}; versions start at the first commit "
                        "that adds it (`dino-mlops data log` lists them)")
    return parse_dvc_file(text, source=f"{rev}:{DVC_FILE}", rev=sha)


def history(root: str | Path, *, max_count: int | None = None) -> list[LogEntry]:
    """Commits (newest first, all branches) that changed data.dvc, each with the version it records."""
    if not has_git(root):
        return []
    args = ["log", "--all", "--format=%H%x09%cI%x09%s"]
    if max_count:
        args.append(f"--max-count={max_count}")
    entries = []
    for line in git(root, *args, "--", DVC_FILE).splitlines():
        sha, date, subject = line.split("\t", 2)
        text = git(root, "show", f"{sha}:{DVC_FILE}", check=False)
        if text:  # empty when the commit deleted data.dvc
            entries.append(LogEntry(parse_dvc_file(text, source=f"{sha[:12]}:{DVC_FILE}", rev=sha), date, subject))
    return entries


def find_rev_by_md5(root: str | Path, md5: str) -> DataVersion | None:
    """The newest commit whose data.dvc records `md5`, or None when no commit does."""
    md5 = normalise_md5(md5)
    return next((entry.version for entry in history(root) if entry.version.md5 == md5), None)


def resolve_version(root: str | Path, spec: str | DataVersion | None) -> DataVersion:
    """A version from a git revision, an md5 (with or without `.dir`), a DataVersion, or None (data.dvc).

    An md5 found in no commit gives a DataVersion with `rev`, `nfiles` and `size` unset; whether the
    remote holds it is checked when it is fetched.
    """
    if isinstance(spec, DataVersion):
        return spec
    if spec is None or spec in ("", "workspace"):
        return current_version(root)
    if looks_like_md5(spec):
        recorded = recorded_version(root)
        if recorded is not None and recorded.md5 == normalise_md5(spec):
            return recorded
        return find_rev_by_md5(root, spec) or DataVersion(md5=normalise_md5(spec))
    if not has_git(root):
        raise DataError(f"cannot resolve git revision {spec!r}: {root} is not a git repository; "
                        "name the version by its md5 instead")
    return version_at(root, spec)
