"""The objects behind a data version: its file listing, the local cache, the remote, the workspace.

A version is a `.dir` object (a JSON list of `{md5, relpath}`) plus one object per file, kept under
`.dvc/cache/files/md5/` and mirrored by the remote. Fetching a version copies
every missing object into the local cache *before* the workspace is touched, and checks that nothing
is missing afterwards, so an interrupted or incomplete transfer never reaches `data/`.

An object's name is its md5, and a remote can still hold bytes that do not match it (a bad disk, a
truncated upload, a hand edit). DVC re-hashes what it copies only when the remote's `verify` option is
on, and it is off by default; even then a mismatching copy is deleted from the cache with nothing but
a debug line, and the pull goes on to report a missing file. So every fetch here turns `verify` on and
names the objects that arrived but did not survive the check: a corrupt copy never reaches the cache
or `data/`. The listing is checked before it is parsed, since DVC reads the remote's listing to find
the files it names.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dino_model.errors import DataError
from dino_model.versioning.remotes import get_remote
from dino_model.versioning.switch import PAUSE
from dino_model.versioning.versions import DataVersion

if TYPE_CHECKING:
    from dvc.data_cloud import Remote
    from dvc.repo import Repo
    from dvc_data.hashfile.tree import Tree

logger = logging.getLogger(__name__)

UNCHANGED = "data/ and data.dvc were left as they were"


def _hash_info(md5: str):
    from dvc_data.hashfile.hash_info import HashInfo

    return HashInfo("md5", md5)


def load_tree(repo: Repo, version: DataVersion, *, remote: str | None = None) -> Tree:
    """The file listing of `version`, from the local cache or else fetched (alone) from the remote."""
    from dvc_data.hashfile.tree import Tree

    cache = repo.cache.local
    hi = _hash_info(version.md5)
    if not cache.exists(version.md5):
        dvc_remote = get_remote(repo, remote, reading=True)
        if not dvc_remote.odb.exists(version.md5):
            raise DataError(
                f"data version {version.md5} is not in the local cache nor in DVC remote {dvc_remote.name!r} "
                f"({dvc_remote.path}): {_origin(version)}. List known versions with `dino-mlops data log`")
        _check_remote_copy(dvc_remote, version.md5, "the file listing", version)
        _transfer(repo, {hi}, dvc_remote, version, names={version.md5: "the file listing"})
    try:
        return Tree.load(cache, hi)
    except Exception as exc:  # a corrupt listing: ObjectFormatError, ValueError, ...
        raise DataError(f"the file listing of data version {version.md5} in {cache.path} is unreadable ({exc}); "
                        "delete that file and pull again") from exc


def _origin(version: DataVersion) -> str:
    if version.rev:
        return f"git revision {version.rev[:12]} records it, but it was never pushed, or the remote lost it"
    return "no commit's data.dvc records it, and it was never pushed"


def missing_objects(repo: Repo, tree: Tree) -> set[str]:
    """md5s of the tree's files (and the listing itself) absent from the local cache."""
    cache = repo.cache.local
    wanted = {oid.value for _, _, oid in tree} | {tree.hash_info.value}
    return {oid for oid in wanted if not cache.exists(oid)}


def cache_workspace(repo: Repo, data_dir: Path) -> None:
    """Copy the files of `data_dir` (and their listing) into the local cache; data.dvc is not touched.

    `repo.commit` would do the same but rewrites data.dvc in place, and a process killed during that
    write leaves it empty.
    """
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.transfer import transfer

    cache = repo.cache.local
    staging, _, tree = build(cache, str(data_dir), repo.fs, "md5", ignore=repo.dvcignore)
    transfer(staging, cache, {tree.hash_info}, shallow=False, hardlink=False)


def fetch(repo: Repo, version: DataVersion, *, remote: str | None = None) -> Tree:
    """Make the local cache hold every object of `version`; returns its listing.

    Raises:
        DataError: the remote is missing or unusable, lacks some objects, or the transfer failed;
            the workspace has not been touched.
    """
    tree = load_tree(repo, version, remote=remote)
    PAUSE.at("listing-fetched")
    missing = missing_objects(repo, tree)
    if not missing:
        return tree
    dvc_remote = get_remote(repo, remote, reading=True)
    logger.info("fetching %d of %d objects of data version %s from remote %r", len(missing), len(tree) + 1,
                version.short, dvc_remote.name)
    names = {oid.value: "/".join((version.path, *key)) for key, _, oid in tree}
    _transfer(repo, {_hash_info(oid) for oid in missing}, dvc_remote, version, names=names)
    still = missing_objects(repo, tree)
    if still:
        paths = sorted("/".join(key) for key, _, oid in tree if oid.value in still)
        raise DataError(
            f"DVC remote {dvc_remote.name!r} ({dvc_remote.path}) lacks {len(still)} of the {len(tree)} files of data "
            f"version {version.md5} (e.g. {', '.join(paths[:3]) or 'its listing'}); {UNCHANGED}. Push the version "
            "again from a machine that has it (`dino-mlops data snapshot`)")
    return tree


def _transfer(repo: Repo, objs: set, dvc_remote: Remote, version: DataVersion, *, names: dict[str, str]) -> None:
    """Copy `objs` from the remote into the cache, re-hashing each copy; DataError naming any corrupt one.

    `names` maps an md5 to what it is (a path under data/, or "the file listing"), for the message.
    """
    odb = dvc_remote.odb
    odb.verify = True  # DVC then hashes each copy it adds to the cache and deletes one that does not match
    try:
        result = repo.cloud.pull(objs, odb=odb)
    except Exception as exc:
        raise DataError(f"fetching data version {version.md5} from DVC remote {dvc_remote.name!r} was interrupted: "
                        f"{exc}; {UNCHANGED}. Run the pull again") from exc
    if result.failed:
        logger.warning("%d objects of data version %s could not be fetched from %r", len(result.failed),
                       version.short, dvc_remote.name)
    cache = repo.cache.local
    corrupt = sorted(hi.value for hi in result.transferred if not cache.exists(hi.value))
    if corrupt:
        _raise_corrupt(dvc_remote, version, corrupt, names)


def _check_remote_copy(dvc_remote: Remote, oid: str, name: str, version: DataVersion) -> None:
    """DataError when the remote's copy of `oid` does not hash to `oid` (read, never changed)."""
    from dvc_data.hashfile.hash import file_md5

    odb = dvc_remote.odb
    try:
        actual = file_md5(odb.oid_to_path(oid), odb.fs)
    except Exception as exc:
        raise DataError(f"reading {name} of data version {version.md5} from DVC remote {dvc_remote.name!r} "
                        f"({dvc_remote.path}) failed: {exc}; {UNCHANGED}. Run the pull again") from exc
    if actual != oid.split(".", 1)[0]:
        _raise_corrupt(dvc_remote, version, [oid], {oid: name})


def _raise_corrupt(dvc_remote: Remote, version: DataVersion, corrupt: list[str], names: dict[str, Any]) -> None:
    odb = dvc_remote.odb
    shown = ", ".join(f"{names.get(oid, oid)} (md5 {oid}, {odb.oid_to_path(oid)})" for oid in corrupt[:3])
    more = f" and {len(corrupt) - 3} more" if len(corrupt) > 3 else ""
    raise DataError(
        f"DVC remote {dvc_remote.name!r} ({dvc_remote.path}) holds {len(corrupt)} corrupt object(s) of data version "
        f"{version.md5}, whose bytes do not hash to their md5: {shown}{more}; nothing corrupt was kept in the local "
        f"cache and {UNCHANGED}. Delete the corrupt object(s) from the remote and push the version again from a "
        "machine that has it (`dino-mlops data snapshot`)")


def version_of_tree(repo: Repo, tree: Tree, *, rev: str | None = None, path: str = "data",
                    files_root: Path | None = None) -> DataVersion:
    """A DataVersion with nfiles and size counted from `tree`'s files: in the cache, or under `files_root`."""
    if files_root is not None:
        size = sum((files_root / Path(*key)).stat().st_size for key, _, _ in tree)
    else:
        cache = repo.cache.local
        size = sum(Path(cache.oid_to_path(oid.value)).stat().st_size for _, _, oid in tree)
    return DataVersion(md5=tree.hash_info.value, nfiles=len(tree), size=size, rev=rev, path=path)


def workspace_tree(repo: Repo, data_dir: Path) -> Tree | None:
    """The listing of `data_dir` as it is on disk (hashes cached in DVC's state db), or None if absent/empty."""
    from dvc_data.hashfile.build import build

    if not data_dir.is_dir() or not any(data_dir.iterdir()):
        return None
    _, _, tree = build(repo.cache.local, str(data_dir), repo.fs, "md5", dry_run=True, ignore=repo.dvcignore)
    return tree if len(tree) else None
