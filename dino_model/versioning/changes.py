"""What changed: files added, removed and modified between two data versions, or versus the workspace.

Both sides are file listings (path -> md5): a version's `.dir` object, read from the local cache or
fetched alone from the remote (no file content is transferred), or the workspace hashed in place with
DVC's state database, so repeated calls re-hash only files whose mtime changed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dino_model.errors import DataError
from dino_model.versioning.remotes import get_remote
from dino_model.versioning.repo import DATA_DIR, open_repo
from dino_model.versioning.store import load_tree, workspace_tree
from dino_model.versioning.versions import DataVersion, recorded_version, resolve_version

if TYPE_CHECKING:
    from dvc.repo import Repo
    from dvc_data.hashfile.tree import Tree

WORKSPACE = "workspace"


@dataclass(frozen=True)
class DataDiff:
    """Paths (relative to the repository root) that differ from `old` to `new`."""

    old: str
    new: str
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed or self.modified)

    def to_dict(self, *, limit: int | None = None) -> dict[str, Any]:
        """As a dict; with `limit`, each list is cut to its first `limit` paths (counts stay exact)."""
        out = asdict(self)
        for key in ("added", "removed", "modified"):
            out[f"n_{key}"] = len(out[key])
            if limit is not None:
                out[key] = out[key][:limit]
        return out


def _listing(tree: Tree | None, prefix: str) -> dict[str, str]:
    if tree is None:
        return {}
    return {"/".join((prefix, *key)): oid.value for key, _, oid in tree}


def compare(old: dict[str, str], new: dict[str, str], *, old_name: str, new_name: str) -> DataDiff:
    """Diff two listings (path -> md5)."""
    return DataDiff(
        old=old_name, new=new_name,
        added=sorted(new.keys() - old.keys()),
        removed=sorted(old.keys() - new.keys()),
        modified=sorted(p for p in old.keys() & new.keys() if old[p] != new[p]),
    )


def _side(repo: Repo, root: Path, spec: str | DataVersion | None, *, remote: str | None) -> tuple[str, dict]:
    if spec == WORKSPACE:
        return WORKSPACE, _listing(workspace_tree(repo, root / DATA_DIR), DATA_DIR)
    version = resolve_version(root, spec)
    return version.md5, _listing(load_tree(repo, version, remote=remote), version.path)


def diff(root: str | Path, a: str | DataVersion | None = None, b: str | DataVersion | None = WORKSPACE, *,
         remote: str | None = None) -> DataDiff:
    """Files added, removed and modified from version `a` to version `b`.

    Args:
        root: repository root.
        a: git revision, md5, DataVersion, "workspace", or None for what data.dvc records.
        b: the same; default "workspace" (data/ as it is on disk).
        remote: remote to read listings from when the local cache lacks them.
    """
    root = Path(root).resolve()
    with open_repo(root) as repo:
        old_name, old = _side(repo, root, a, remote=remote)
        new_name, new = _side(repo, root, b, remote=remote)
    return compare(old, new, old_name=old_name, new_name=new_name)


def status(root: str | Path, *, remote: str | None = None, limit: int = 20) -> dict[str, Any]:
    """The recorded version, whether data/ matches it, what changed, and whether the remote holds it."""
    root = Path(root).resolve()
    with open_repo(root) as repo:  # first completes a data switch that a killed pull left half-done
        version = recorded_version(root)
        result: dict[str, Any] = {"version": version.to_dict() if version else None,
                                  "committed": bool(version and version.rev)}
        ws = workspace_tree(repo, root / DATA_DIR)
        if version is None:
            result["workspace"] = "untracked" if ws is not None else "missing"
        elif ws is None:
            result["workspace"] = "missing"
        elif ws.hash_info.value == version.md5:
            result["workspace"] = "clean"
        else:
            result["workspace"] = "modified"
            result |= _changes(repo, version, ws, remote=remote, limit=limit)
        if version is not None:
            result["in_cache"] = bool(repo.cache.local.exists(version.md5))
        result |= _remote_state(repo, version, remote=remote)
    return result


def _changes(repo: Repo, version: DataVersion, ws: Tree, *, remote: str | None, limit: int) -> dict[str, Any]:
    try:
        old = _listing(load_tree(repo, version, remote=remote), version.path)
    except DataError as exc:
        return {"changes_error": str(exc)}
    diff_ = compare(old, _listing(ws, DATA_DIR), old_name=version.md5, new_name=WORKSPACE)
    return {"changes": diff_.to_dict(limit=limit)}


def _remote_state(repo: Repo, version: DataVersion | None, *, remote: str | None) -> dict[str, Any]:
    try:
        dvc_remote = get_remote(repo, remote)
    except DataError as exc:
        return {"remote_error": str(exc)}
    if version is None:
        return {"remote": dvc_remote.name}
    try:
        found = bool(dvc_remote.odb.exists(version.md5))  # the listing is uploaded after all its files
    except Exception as exc:  # a network or permission failure is a state to report, not a crash
        return {"remote": dvc_remote.name, "remote_error": f"cannot reach {dvc_remote.path}: {exc}"}
    return {"remote": dvc_remote.name, "in_remote": found}
