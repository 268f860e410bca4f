"""A data version materialised from its DVC remote by md5, into a cache folder shared by the steps that need it.

A pipeline step gets a DataReference (reference.py), not the data. It reads the version straight
from the content-addressed remote, with no git clone: a scratch DVC project (no SCM, a few bytes of
config) names the remote, store.fetch copies and verifies the objects, and each file is hard-linked
into `<cache root>/<md5>/`. The cache root is, in order: `DINO_DATA_CACHE` or `/data-cache` when it
exists (a shared claim mounted into the steps: filled once per md5 by the first step that needs it,
under a file lock, and read by every later one), else `DINO_DATA_LOCAL_CACHE`, the step's scratch
volume `/data-scratch` when mounted, or the temporary folder. Folders (train/, val/) are filled
separately, so a step that scores on val/ never reads train/ from the remote. A folder of tar shards
can instead be streamed (`stream_root`): each training rank then reads only the shards its plan
gives it (shard_plan.py), nothing is copied first.

Every call reports what it read from the remote (bytes, files), which the pipeline steps log and
benchmarks/pipeline_io.py counts.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dino_model.errors import DataError
from dino_model.versioning.reference import DataReference
from dino_model.versioning.repo import open_repo
from dino_model.versioning.versions import DataVersion

if TYPE_CHECKING:
    from dvc.repo import Repo
    from dvc_data.hashfile.tree import Tree

logger = logging.getLogger(__name__)

SHARED_CACHE_ENV = "DINO_DATA_CACHE"
LOCAL_CACHE_ENV = "DINO_DATA_LOCAL_CACHE"
SHARED_CACHE_DIR = Path("/data-cache")  # where the pipeline mounts the shared cache claim
SCRATCH_DIR = Path("/data-scratch")  # the step's own sized scratch volume (pipelines/resources.py)
REMOTE_NAME = "data"
COMPLETE = ".complete"  # marker of a fully materialised version; `.complete-<subdir>` for one folder


@dataclass(frozen=True)
class Materialized:
    """A version (or some of its top-level folders) on local disk, and what it cost to get it there."""

    path: Path
    bytes_read: int
    files_read: int
    reused: bool


def cache_root(explicit: str | Path | None = None) -> Path:
    """Where versions are materialised: `explicit`, the shared claim, else the pod's own disk."""
    if explicit:
        return Path(explicit)
    shared = Path(os.environ.get(SHARED_CACHE_ENV) or SHARED_CACHE_DIR)
    if shared.is_dir() and os.access(shared, os.W_OK | os.X_OK):
        return shared
    if os.environ.get(LOCAL_CACHE_ENV):
        return Path(os.environ[LOCAL_CACHE_ENV])
    if SCRATCH_DIR.is_dir() and os.access(SCRATCH_DIR, os.W_OK | os.X_OK):
        return SCRATCH_DIR
    return Path(tempfile.gettempdir()) / "dino-data-cache"


def version_dir(root: Path, ref: DataReference) -> Path:
    return root / ref.md5.removesuffix(".dir")


def materialize(ref: DataReference, *, subdirs: Sequence[str] = (), root: str | Path | None = None) -> Materialized:
    """The files of `ref` (only those in its folders `subdirs`, e.g. `train`, when given) under `<cache root>/<md5>/`.

    A folder some earlier step completed is reused without reading the remote. Concurrent steps on a
    shared claim wait for one another (one lock per md5), so each object is read from the remote once.

    Raises:
        DataError: the remote is unreachable or lacks the version, a folder is not in the version,
            or an object is corrupt; nothing partial is left marked complete.
    """
    base = cache_root(root)
    base.mkdir(parents=True, exist_ok=True)
    dest = version_dir(base, ref)
    wanted = [s.strip("/") for s in subdirs]
    with _locked(base / f"{dest.name}.lock"):
        if (dest / COMPLETE).exists() or (wanted and all(_done(dest, s) for s in wanted)):
            logger.info("data version %s already materialised at %s", ref.short, dest)
            return Materialized(dest, 0, 0, True)
        read, files = _fill(ref, dest, base, wanted)
    logger.info("data version %s%s materialised at %s: %d files, %d bytes read from %s", ref.short,
                f" ({', '.join(wanted)})" if wanted else "", dest, files, read, ref.remote_url)
    return Materialized(dest, read, files, False)


def _done(dest: Path, subdir: str) -> bool:
    """Whether `subdir`, or a folder above it, was completed."""
    parts = subdir.split("/")
    return any((dest / f"{COMPLETE}-{'--'.join(parts[:n])}").exists() for n in range(1, len(parts) + 1))


def _fill(ref: DataReference, dest: Path, base: Path, wanted: list[str]) -> tuple[int, int]:
    """Fetch the objects of the `wanted` top-level folders (all when empty) not yet complete in `dest`, link
    them into place and mark each folder complete; (bytes, files) read from the remote."""
    from dino_model.versioning.store import fetch, missing_objects, under

    with scratch_repo(ref, base) as repo:
        version = DataVersion(md5=ref.md5, nfiles=ref.nfiles or None, size=ref.size or None)
        tree = _listing(repo, version)
        present = sorted({key[0] for key, _, _ in tree})
        _check_subdirs(ref, tree, present, wanted)
        todo = [s for s in (wanted or present) if not _done(dest, s)]
        missing = missing_objects(repo, tree, subdirs=todo)
        fetch(repo, version, remote=REMOTE_NAME, subdirs=todo)
        cache = repo.cache.local
        # the listing (fetched by _listing into this fresh cache) and every object fetched for `todo`
        read = sum(Path(cache.oid_to_path(oid)).stat().st_size for oid in missing | {ref.md5})
        for key, _, oid in tree:
            if under(key, todo):
                _link(Path(cache.oid_to_path(oid.value)), dest.joinpath(*key))
    for folder in todo:
        (dest / f"{COMPLETE}-{folder.replace('/', '--')}").touch()
    if all(_done(dest, s) for s in present):
        (dest / COMPLETE).touch()
    return read, len(missing - {ref.md5})


def _listing(repo: Repo, version: DataVersion) -> Tree:
    from dino_model.versioning.store import load_tree

    return load_tree(repo, version, remote=REMOTE_NAME)


def _check_subdirs(ref: DataReference, tree: Tree, present: list[str], subdirs: list[str]) -> None:
    from dino_model.versioning.store import under

    absent = [s for s in subdirs if not any(under(key, [s]) for key, _, _ in tree)]
    if absent:
        raise DataError(f"data version {ref.md5} has no folder {', '.join(absent)} (it holds "
                        f"{', '.join(present) or 'no files'}); check the pipeline's train_subdir/val_subdir")


def _link(src: Path, dst: Path) -> None:
    """Hard-link a cache object to its place (a copy across filesystems); read-only either way."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
        dst.chmod(0o444)


def listing_of(ref: DataReference, *, root: str | Path | None = None) -> list[str]:
    """Paths of every file in the version, read from the remote (only the listing is fetched)."""
    base = cache_root(root)
    base.mkdir(parents=True, exist_ok=True)
    with scratch_repo(ref, base) as repo:
        tree = _listing(repo, DataVersion(md5=ref.md5))
        return sorted("/".join(key) for key, _, _ in tree)


@contextmanager
def scratch_repo(ref: DataReference, base: Path, *, keep: Path | None = None) -> Iterator[Repo]:
    """An open DVC project with no git, whose default remote is the reference's; removed afterwards
    unless `keep` names where it should stay."""
    path = keep or Path(tempfile.mkdtemp(prefix=".scratch-", dir=base))
    try:
        write_scratch_config(path, ref)
        with open_repo(path) as repo:
            yield repo
    finally:
        if keep is None:
            shutil.rmtree(path, ignore_errors=True)


def write_scratch_config(path: Path, ref: DataReference) -> None:
    """`.dvc/config` of a project that reads `ref`'s remote (credentials stay in the environment)."""
    from dvc.config import Config

    dvc_dir = path / ".dvc"
    dvc_dir.mkdir(parents=True, exist_ok=True)
    config = Config.init(str(dvc_dir))
    with config.edit("repo") as conf:
        conf["core"]["no_scm"] = True
        conf["core"]["analytics"] = False
        conf["core"]["remote"] = REMOTE_NAME
        conf["remote"][REMOTE_NAME] = {"url": ref.remote_url}
        if ref.endpoint_url:
            conf["remote"][REMOTE_NAME]["endpointurl"] = ref.endpoint_url


def stream_root(ref: DataReference, subdir: str, *, root: str | Path | None = None) -> str:
    """A `dvc://` data.root that streams the tar shards of `subdir` from the remote (shard_location.py).

    The project it names is a few bytes (config and data.dvc) under the cache root; each training
    rank opens it itself and reads only the shards its plan lists.
    """
    path = cache_root(root) / f"{ref.md5.removesuffix('.dir')}.stream"
    write_scratch_config(path, ref)
    version = DataVersion(md5=ref.md5, nfiles=ref.nfiles or None, size=ref.size or None)
    (path / "data.dvc").write_text(version.dvc_text())
    return f"dvc://data/{subdir.strip('/')}?repo={path}&remote={REMOTE_NAME}"


def holds_shards(ref: DataReference, subdir: str, *, root: str | Path | None = None) -> bool:
    """Whether `subdir` of the version is a folder of tar shards (has shards.json)."""
    from dino_model.data.shards import INDEX_NAME

    return f"{subdir.strip('/')}/{INDEX_NAME}" in listing_of(ref, root=root)


def holds_folder(ref: DataReference, subdir: str, *, root: str | Path | None = None) -> bool:
    """Whether the version holds any file under `subdir` (e.g. the flywheel's `captured/`); reads the listing only."""
    prefix = f"{subdir.strip('/')}/"
    return bool(subdir.strip("/")) and any(path.startswith(prefix) for path in listing_of(ref, root=root))


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def training_root(reference: str, subdir: str) -> str:
    """data.root for training on `subdir` of the referenced version: a stream when it holds tar shards,
    else the folder materialised in the cache."""
    ref = DataReference.from_json(reference)
    if holds_shards(ref, subdir):
        return stream_root(ref, subdir)
    return str(materialize(ref, subdirs=[subdir]).path / subdir)


def extra_training_roots(reference: str, subdir: str) -> list[str]:
    """data.extra_roots for `subdir` of the referenced version: its materialised folder when the version
    holds it, else none (the flywheel's `captured/` exists only once images were captured; "" asks for none)."""
    ref = DataReference.from_json(reference)
    if not holds_folder(ref, subdir):
        logger.info("data version %s holds no %s/ folder: training on its training folder alone", ref.short,
                    subdir.strip("/") or "extra")
        return []
    return [str(materialize(ref, subdirs=[subdir]).path / subdir.strip("/"))]


def local_folders(reference: str, *subdirs: str) -> Path:
    """The cache folder holding `subdirs` of the referenced version (materialised first if needed)."""
    return materialize(DataReference.from_json(reference), subdirs=subdirs).path
