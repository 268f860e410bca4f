"""Recording a new data version (snapshot) and switching the workspace to another one (checkout).

Both are transactions over `data/` and `data.dvc`. A snapshot checks the remote first, then adds and
pushes; if anything fails, data.dvc is put back. A checkout refuses to discard changes that no version
records, fetches (and verifies) every object of the target version into the local cache (store.fetch)
before the workspace is touched, then switches data/ and data.dvc together through a staging folder and
a journal (switch.py), so that even a killed process leaves one version or the other. Where data/ cannot
be renamed (a mount point), DVC checks it out in place and data.dvc and data/ are rolled back on failure.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from dino_model.errors import DataError
from dino_model.runtime import atomic
from dino_model.versioning.remotes import get_remote
from dino_model.versioning.repo import (
    DATA_DIR,
    DVC_FILE,
    git,
    has_git,
    open_repo,
    repo_lock,
    restore_text,
)
from dino_model.versioning.store import (
    UNCHANGED,
    cache_workspace,
    fetch,
    missing_objects,
    version_of_tree,
    workspace_tree,
)
from dino_model.versioning.switch import PAUSE, can_swap, switch
from dino_model.versioning.versions import DataVersion, parse_dvc_file, recorded_version, resolve_version

logger = logging.getLogger(__name__)


def _read(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


def snapshot(root: str | Path, message: str | None = None, *, remote: str | None = None,
             site_cache_dir: str | Path | None = None) -> DataVersion:
    """Record `data/` as it is now as a data version and push it to the remote.

    Args:
        root: repository root.
        message: if given, also commit data.dvc to git with this message (only data.dvc, and .gitignore
            when DVC had to add `/data` to it); otherwise data.dvc is left for you to commit.
        remote: remote name (default: the configured default remote).
        site_cache_dir: DVC site cache (see repo.resolve_site_cache_dir).

    Returns:
        The recorded version (`rev` set when it is committed).

    Raises:
        DataError: no data/, no usable remote, or the add/push failed (data.dvc is then restored).
    """
    root = Path(root).resolve()
    data_dir, dvc_file, gitignore = root / DATA_DIR, root / DVC_FILE, root / ".gitignore"
    if not data_dir.is_dir() or not any(data_dir.iterdir()):
        raise DataError(f"{data_dir} is missing or empty: there is nothing to snapshot; put the image folders "
                        "there, or run `dino-mlops data ensure` for the default data set")
    with open_repo(root, site_cache_dir=site_cache_dir) as repo:
        before, ignore_before = _read(dvc_file), _read(gitignore)
        dvc_remote = get_remote(repo, remote)  # fail before anything changes
        try:
            repo.add(str(data_dir))
            pushed = repo.push(targets=[str(dvc_file)], remote=dvc_remote.name)
        except BaseException as exc:
            restore_text(dvc_file, before)
            restore_text(gitignore, ignore_before)
            if isinstance(exc, Exception):
                raise DataError(f"snapshot of {data_dir} to DVC remote {dvc_remote.name!r} ({dvc_remote.path}) "
                                f"failed: {exc}; data.dvc was restored") from exc
            raise
    version = parse_dvc_file(dvc_file.read_text(), source=str(dvc_file))
    changed = before is None or parse_dvc_file(before, source="previous data.dvc").md5 != version.md5
    logger.info("data version %s (%d files, %d bytes) %s; %d objects pushed to remote %r", version.md5,
                version.nfiles or 0, version.size or 0, "recorded" if changed else "unchanged", pushed,
                dvc_remote.name)
    if message is not None:
        extra = [".gitignore"] if _read(gitignore) != ignore_before else []
        return _commit(root, version, message, extra)
    return recorded_version(root) or version


def _commit(root: Path, version: DataVersion, message: str, extra: list[str]) -> DataVersion:
    if not has_git(root):
        raise DataError(f"cannot commit data.dvc: {root} is not a git repository; snapshot without a message")
    paths = [DVC_FILE, *extra]
    git(root, "add", "--", *paths)
    if git(root, "diff", "--cached", "--name-only", "--", *paths).strip():
        git(root, "commit", "--quiet", "-m", message, "--", *paths)
        logger.info("committed %s: %s", ", ".join(paths), message)
    else:
        logger.info("data.dvc already committed; no new commit")
    return recorded_version(root) or version


def checkout_version(root: str | Path, version: str | DataVersion | None = None, *, remote: str | None = None,
                     force: bool = False, site_cache_dir: str | Path | None = None) -> DataVersion:
    """Make `data/` and `data.dvc` hold `version`, fetching it from the remote as needed.

    Args:
        root: repository root.
        version: a git revision, a data md5, a DataVersion, or None for what data.dvc records (a pull).
        remote: remote name (default: the configured default remote).
        force: discard changes in data/ that no data version records.
        site_cache_dir: DVC site cache (see repo.resolve_site_cache_dir).

    Returns:
        The version now in the workspace, with nfiles and size.

    Raises:
        DataError: unknown version, no usable remote, missing objects, an interrupted transfer, or
            unrecorded changes in data/ without `force`; data/ and data.dvc are then as they were.
    """
    root = Path(root).resolve()
    data_dir, dvc_file = root / DATA_DIR, root / DVC_FILE
    with open_repo(root, site_cache_dir=site_cache_dir) as repo, repo_lock(repo):
        target = resolve_version(root, version)  # after open_repo finished any interrupted switch
        before = _read(dvc_file)
        recorded = parse_dvc_file(before, source=str(dvc_file)) if before else None
        workspace = workspace_tree(repo, data_dir)
        ws_md5 = workspace.hash_info.value if workspace is not None else None
        if ws_md5 and not force and ws_md5 not in {target.md5, recorded.md5 if recorded else None}:
            raise DataError(
                f"{data_dir} holds changes that no data version records (it hashes to {ws_md5}, data.dvc records "
                f"{recorded.md5 if recorded else 'nothing'}); snapshot them first (`dino-mlops data snapshot`) or "
                f"pass --force to discard them; {UNCHANGED}")
        if workspace is not None and ws_md5 == target.md5:  # nothing to fetch: at most data.dvc to rewrite
            target = version_of_tree(repo, workspace, rev=target.rev, path=target.path, files_root=data_dir)
            _record(root, target, before)
            logger.info("data/ already holds version %s", target.short)
            return target
        tree = fetch(repo, target, remote=remote)
        PAUSE.at("fetched")
        target = version_of_tree(repo, tree, rev=target.rev, path=target.path)
        if workspace is not None and ws_md5 == (recorded.md5 if recorded else None) and missing_objects(
                repo, workspace):
            cache_workspace(repo, data_dir)  # keep the current version in the cache, to switch back offline
        swap = can_swap(root)
        if swap:
            switch(repo, root, tree, _dvc_text(root, target), workspace)
    if not swap:
        logger.warning("%s is a mount point or a symbolic link: checking the version out in place, which a killed "
                       "process can leave half-done", data_dir)
        _apply(root, _dvc_text(root, target), before, had_data=workspace is not None, site_cache_dir=site_cache_dir)
    logger.info("data/ now holds version %s (%d files)%s", target.md5, target.nfiles or 0,
                f" from git revision {target.rev[:12]}" if target.rev else "")
    return target


def _dvc_text(root: Path, version: DataVersion) -> str:
    """data.dvc as the recording commit has it, or as DVC would write it for an uncommitted version."""
    return git(root, "show", f"{version.rev}:{DVC_FILE}") if version.rev else version.dvc_text()


def _record(root: Path, version: DataVersion, before: str | None) -> None:
    text = _dvc_text(root, version)
    if before is None or parse_dvc_file(before, source=DVC_FILE).md5 != version.md5 or (version.rev and text != before):
        atomic.write_text(root / DVC_FILE, text)


def _apply(root: Path, text: str, before: str | None, *, had_data: bool, site_cache_dir: str | Path | None) -> None:
    """Write data.dvc and check it out from the (complete) local cache; undo both on failure."""
    data_dir, dvc_file = root / DATA_DIR, root / DVC_FILE
    try:
        atomic.write_text(dvc_file, text)
        with open_repo(root, site_cache_dir=site_cache_dir) as repo:
            repo.checkout(targets=[str(dvc_file)], force=True)
    except BaseException as exc:
        logger.error("checkout failed (%s); restoring the previous data.dvc and data/", exc)
        restore_text(dvc_file, before)
        _rollback(root, had_data=had_data, has_record=before is not None, site_cache_dir=site_cache_dir)
        if isinstance(exc, Exception):
            raise DataError(f"checking out the data version failed while writing {data_dir}: {exc}; "
                            "data.dvc and data/ were restored") from exc
        raise


def _rollback(root: Path, *, had_data: bool, has_record: bool, site_cache_dir: str | Path | None) -> None:
    data_dir = root / DATA_DIR
    if not had_data:
        shutil.rmtree(data_dir, ignore_errors=True)
        return
    if has_record:
        try:
            with open_repo(root, site_cache_dir=site_cache_dir) as repo:
                repo.checkout(targets=[str(root / DVC_FILE)], force=True)
        except Exception:
            logger.exception("could not restore %s from the cache; run `dino-mlops data pull --force`", data_dir)
