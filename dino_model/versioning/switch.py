"""Switching data/ and data.dvc to another version so that a killed process leaves one version or the other.

DVC's own checkout rewrites data/ file by file after data.dvc has changed, so a pull killed half-way
(SIGKILL, OOM killer, a pod evicted) leaves data.dvc naming one version and data/ holding parts of two,
and the next command then asks to --force away what looks like unrecorded changes. Here a switch is:

1. every object is already in the local cache (store.fetch; killing the process there changes nothing);
2. the version is put together in a staging folder, `.dvc/tmp/data-switch/new`: files that data/
   already holds with the same md5 are hard-linked from it (creating thousands of small files is what
   costs time), the others are checked out from the cache (killed here: data/ and data.dvc are
   untouched, and the leftover folder is deleted later);
3. a journal naming the new data.dvc is written there in one rename: from now on the switch counts as
   done, because the staged copy is complete;
4. data/ is renamed to `old` beside it, `new` is renamed to data/, data.dvc is rewritten, the journal is
   removed, and `old` is deleted.

A kill can only stop the process between two renames. Every command that opens the repository
(repo.open_repo) first calls `finish`, which reads the journal and completes step 4 from wherever it
stopped, so it reports the new version, consistently; with no journal it deletes a leftover staging
folder. DVC's repository lock is held while staging, switching and finishing, so two processes never
work on data/ at once. The rename needs data/ and `.dvc/tmp` on one file system and data/ to be a plain
folder: when data/ is a mount point or a symbolic link, `can_swap` is False and the caller falls back to
DVC's in-place checkout.

`DINO_DATA_PAUSE_AT=<phase>` (runtime/pause.py) stops a pull at a named phase (see PHASES) until it is killed, so that
tests (and operators rehearsing a failure) can kill it at a known moment.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from dino_model.errors import DataError
from dino_model.runtime import atomic
from dino_model.runtime.pause import PausePoints
from dino_model.versioning.layout import DATA_DIR, DVC_FILE

if TYPE_CHECKING:
    from dvc.repo import Repo
    from dvc_data.hashfile.tree import Tree

logger = logging.getLogger(__name__)

SWITCH_DIR = Path(".dvc") / "tmp" / "data-switch"  # relative to the repository root; git-ignored with .dvc/tmp
JOURNAL = "journal.json"
PHASES = ("listing-fetched", "fetched", "staging", "staged", "journal-written", "moved-aside", "renamed",
          "recorded")
PAUSE = PausePoints("DINO_DATA_PAUSE_AT", PHASES,
                    "pausing at data switch phase {point!r} ({env} is set); kill the process to continue the rehearsal")
PAUSE_ENV = PAUSE.env


def switch_dir(root: Path) -> Path:
    return root / SWITCH_DIR


def can_swap(root: Path) -> bool:
    """Whether data/ can be replaced by a rename from the staging folder."""
    data_dir = root / DATA_DIR
    if data_dir.is_symlink() or (data_dir.exists() and os.path.ismount(data_dir)):
        return False
    staging_parent = switch_dir(root).parent
    staging_parent.mkdir(parents=True, exist_ok=True)
    return staging_parent.stat().st_dev == root.stat().st_dev


def switch(repo: Repo, root: Path, tree: Tree, dvc_text: str, workspace: Tree | None = None) -> None:
    """Make data/ hold `tree` (all of whose objects are in the cache) and data.dvc hold `dvc_text`.

    `workspace` is the listing of data/ as it is (hashed by the caller); its files that `tree` holds
    unchanged are reused. The caller holds the repository lock. On a failure before the journal is
    written (disk full while staging) the staging folder is removed and data/ and data.dvc are as they were.
    """
    base = switch_dir(root)
    shutil.rmtree(base, ignore_errors=True)  # a finished or abandoned earlier switch: `finish` ran at open
    base.mkdir(parents=True)
    try:
        _stage(repo, tree, base / "new", reuse=_link_unchanged(tree, workspace, root / DATA_DIR, base / "new"))
    except BaseException as exc:
        shutil.rmtree(base, ignore_errors=True)
        if isinstance(exc, Exception):
            raise DataError(f"checking out data version {tree.hash_info.value} from the cache into {base / 'new'} "
                            f"failed: {exc}; data/ and data.dvc were left as they were") from exc
        raise
    PAUSE.at("staged")
    atomic.write_text(base / JOURNAL, json.dumps({"md5": tree.hash_info.value, "data_dvc": dvc_text}))
    PAUSE.at("journal-written")
    _complete_or_roll_back(root, base)
    _remember_hashes(repo, root / DATA_DIR, tree)


def _link_unchanged(tree: Tree, workspace: Tree | None, data_dir: Path, staging: Path) -> Tree | None:
    """Hard-link into `staging` the files of data/ whose md5 `tree` records at the same path; their listing."""
    from dvc_data.hashfile.tree import Tree

    staging.mkdir()
    if workspace is None:
        return None
    kept = Tree()
    for key, meta, oid in tree:
        if workspace.get(key, (None, None))[1] != oid:
            continue
        target = staging.joinpath(*key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(data_dir.joinpath(*key), target, follow_symlinks=False)
        kept.add(key, meta, oid)
    if not len(kept):
        return None
    kept.digest()
    return kept


def _stage(repo: Repo, tree: Tree, staging: Path, *, reuse: Tree | None) -> None:
    """Check the files of `tree` that `reuse` lacks out of the local cache into `staging` (cache link types)."""
    from dvc.fs.callbacks import TqdmCallback
    from dvc_data.hashfile.checkout import checkout
    from dvc_objects.fs.local import localfs

    class _PauseHalfWay(TqdmCallback):
        """DVC's file bar (drawn on a terminal only, like its push and fetch bars); a test pause half-way."""

        def relative_update(self, inc: int = 1) -> None:
            super().relative_update(inc)
            if self.size and self.value * 2 >= self.size:
                PAUSE.at("staging")

    with _PauseHalfWay(desc="Checkout", unit="file") as callback:
        checkout(str(staging), localfs, tree, repo.cache.local, force=True, old=reuse, progress_callback=callback)


def _remember_hashes(repo: Repo, data_dir: Path, tree: Tree) -> None:
    """Record the md5 of each file just put in data/ in DVC's state db, as DVC's own checkout does.

    The files were copied from verified cache objects; without this the next command would re-read all
    of them to hash data/. A process killed before this line only costs that re-read.
    """
    from dvc_objects.fs.local import localfs

    repo.state.save_many(((str(data_dir.joinpath(*key)), oid, None) for key, _, oid in tree), localfs)


def finish(root: Path) -> str | None:
    """Complete a switch that a killed process left, or remove its leftovers; the md5 switched to, if any.

    The caller holds the repository lock.
    """
    base = switch_dir(root)
    if not base.exists():
        return None
    if not (base / JOURNAL).exists():  # killed while staging: data/ and data.dvc were never touched
        shutil.rmtree(base)
        logger.info("removed %s, left by a data pull that stopped before switching data/", base)
        return None
    md5 = _complete_or_roll_back(root, base)
    logger.warning("finished switching data/ to version %s, which an interrupted pull had begun", md5)
    return md5


def _complete_or_roll_back(root: Path, base: Path) -> str:
    """`_complete`; when a step fails (a rename refused, a full disk), undo the switch if data/ was not replaced."""
    try:
        return _complete(root, base)
    except OSError as exc:
        data_dir, new, old = root / DATA_DIR, base / "new", base / "old"
        if not new.exists():  # data/ already holds the new version; only the record is missing
            raise DataError(f"{data_dir} now holds the new data version, but recording it failed ({exc}); once the "
                            "cause is fixed, any `dino-mlops data` command finishes the switch") from exc
        if old.exists() and not data_dir.exists():
            old.rename(data_dir)
        (base / JOURNAL).unlink()
        shutil.rmtree(base, ignore_errors=True)
        raise DataError(f"switching {data_dir} to another data version failed ({exc}); data/ and data.dvc were "
                        "left as they were") from exc


def _complete(root: Path, base: Path) -> str:
    """Steps after the journal: each one checks whether it already happened, so it can run again."""
    journal_path = base / JOURNAL
    try:
        journal = json.loads(journal_path.read_text())
        md5, dvc_text = journal["md5"], journal["data_dvc"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{journal_path}, the record of an unfinished data switch, is unreadable ({exc}); "
                        f"delete {base} and run `dino-mlops data pull --force`") from exc
    data_dir, new, old = root / DATA_DIR, base / "new", base / "old"
    if new.exists():  # data/ still holds the previous version (or nothing)
        if data_dir.exists():
            if old.exists():
                raise DataError(f"cannot finish switching {data_dir} to version {md5}: both {data_dir} and {old} "
                                f"exist beside the staged copy {new}; keep the one you want as {data_dir}, delete "
                                f"{base} and run `dino-mlops data pull`")
            data_dir.rename(old)
            PAUSE.at("moved-aside")
        new.rename(data_dir)
        PAUSE.at("renamed")
    dvc_file = root / DVC_FILE
    if not dvc_file.exists() or dvc_file.read_text() != dvc_text:
        atomic.write_text(dvc_file, dvc_text)
    PAUSE.at("recorded")
    journal_path.unlink()
    shutil.rmtree(base)
    return md5
