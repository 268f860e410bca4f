"""The default data set on any machine: scikit-learn's digits under data/digits, pulled or rebuilt.

A fresh clone carries data.dvc and .dvc/config but not the data, and its default remote (the
git-ignored `.dvc-remote/` folder) is empty. The digits ship inside scikit-learn, so the data set can
be rebuilt instead of downloaded (the platform runs without network access).
`ensure_default_data` pulls the recorded version when a remote holds it; otherwise it materialises the
digits (train/val class folders of 32x32 PNGs, dino_model.data.materialize), checks them against
data.dvc, and pushes them to the remote so that later pulls work. PNG bytes depend on the Pillow and
zlib versions, so a rebuilt set can hash differently from the recorded one: it is then recorded as a
new version, with a warning, rather than silently replacing the recorded md5.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from dino_model.errors import DataError
from dino_model.versioning.remotes import add_remote, get_remote
from dino_model.versioning.repo import DATA_DIR, DEFAULT_REMOTE, DEFAULT_REMOTE_DIR, init_repo, open_repo
from dino_model.versioning.store import cache_workspace, missing_objects, workspace_tree
from dino_model.versioning.sync import checkout_version, snapshot
from dino_model.versioning.versions import DataVersion, recorded_version

logger = logging.getLogger(__name__)

DEFAULT_SOURCE = "digits"  # a dino_model.data.materialize source; written to data/<source>/{train,val}


def default_data_root(root: str | Path, source: str = DEFAULT_SOURCE) -> Path:
    """The folder holding `source`'s train/ and val/ splits (what configs point at: data/digits/train)."""
    return Path(root).resolve() / DATA_DIR / source


def ensure_default_data(root: str | Path, *, source: str = DEFAULT_SOURCE, remote: str | None = None,
                        site_cache_dir: str | Path | None = None) -> DataVersion:
    """Make data/ hold a recorded, pushed data version; rebuild the default set when it is nowhere.

    Steps: initialise DVC if the folder has none; if data/ matches data.dvc, make sure the cache and
    the remote hold it (fast when they do: hashes come from DVC's state database); if data/ is absent,
    pull the recorded version, or rebuild `source` when no remote has it; record and push whatever
    data/ then holds, saying in the log whether it matches data.dvc or became a new version.

    Returns:
        The version data/ holds (`rev` set when data.dvc is committed).
    """
    root = Path(root).resolve()
    if not (root / ".dvc").is_dir():
        init_repo(root)
    _ensure_some_remote(root, remote)
    recorded = recorded_version(root)
    with open_repo(root, site_cache_dir=site_cache_dir) as repo:
        workspace = workspace_tree(repo, root / DATA_DIR)
        if recorded is not None and workspace is not None and workspace.hash_info.value == recorded.md5:
            _cache_and_push(repo, recorded, remote=remote)
            logger.info("data version %s is in place, cached and pushed", recorded.short)
            return recorded
    if workspace is None and recorded is not None:
        try:
            return checkout_version(root, None, remote=remote, site_cache_dir=site_cache_dir)
        except DataError as exc:
            logger.info("recorded data version %s cannot be pulled (%s); rebuilding %r from its packaged source",
                        recorded.short, exc, source)
    if workspace is None:
        _materialize(root, source)
    version = snapshot(root, remote=remote, site_cache_dir=site_cache_dir)
    if recorded is None:
        logger.warning("no data version was recorded: data/ is now version %s (%d files); commit data.dvc",
                       version.md5, version.nfiles or 0)
    elif version.md5 == recorded.md5:
        logger.info("rebuilt data matches data.dvc (%s, %d files) and is pushed", version.md5, version.nfiles or 0)
    else:
        logger.warning("data/ differs from data.dvc (recorded %s, found %s): recorded it as a new data version; "
                       "commit data.dvc to keep it (`dino-mlops data diff %s` lists the differences)",
                       recorded.md5, version.md5, recorded.md5)
    return version


def _ensure_some_remote(root: Path, remote: str | None) -> None:
    """Add the local default remote when the repository has no remote at all (embedded use)."""
    with open_repo(root) as repo:
        if remote or repo.config["remote"]:
            return
    add_remote(root, DEFAULT_REMOTE, str(root / DEFAULT_REMOTE_DIR), default=True)
    logger.warning("no DVC remote was configured: added the local default remote %r at %s",
                   DEFAULT_REMOTE, root / DEFAULT_REMOTE_DIR)


def _cache_and_push(repo, version: DataVersion, *, remote: str | None) -> None:
    workspace = workspace_tree(repo, Path(repo.root_dir) / DATA_DIR)
    if workspace is not None and missing_objects(repo, workspace):
        cache_workspace(repo, Path(repo.root_dir) / DATA_DIR)
    dvc_remote = get_remote(repo, remote)
    if dvc_remote.odb.exists(version.md5):  # DVC uploads a .dir listing only after all its files
        return
    from dvc.exceptions import DvcException

    try:
        pushed = repo.push(targets=[str(Path(repo.root_dir) / "data.dvc")], remote=dvc_remote.name)
    except DvcException as exc:
        raise DataError(f"pushing data version {version.md5} to DVC remote {dvc_remote.name!r} "
                        f"({dvc_remote.path}) failed: {exc}") from exc
    logger.info("pushed %d objects of data version %s to remote %r", pushed, version.short, dvc_remote.name)


def _materialize(root: Path, source: str) -> None:
    """Write `source` into data/<source> through a staging folder, so data/ is never half-written."""
    from dino_model.data.materialize import materialize

    data_dir = root / DATA_DIR
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".data-build-"))
    try:
        materialize(source, staging / source)
        if data_dir.exists():
            shutil.rmtree(data_dir)  # holds no file: workspace_tree found nothing in it
        staging.rename(data_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("rebuilt %s from its packaged source into %s", source, data_dir / source)
