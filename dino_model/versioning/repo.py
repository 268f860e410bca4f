"""Opening the project's DVC repository quietly, running git, and turning DVC failures into DataError.

Every other versioning module reaches DVC through `open_repo`, so the same rules hold everywhere:
usage analytics stay off (`DVC_NO_ANALYTICS`); the site cache can be moved off
`/var/tmp/dvc`, which is not writable in read-only containers (iterative/dvc #9184); a switch of data/
that a killed process left half-done is completed before anything reads data/ or data.dvc (switch.py),
so every command sees one consistent version; DVC's own console
handlers, which write to stdout, are removed so that the CLI's stdout carries only its result; and DVC's
exceptions become `DataError` messages saying what to do. DVC's own progress bars (add, push, fetch
from the remote, and the checkout into data/ in switch.py) stay on: DVC draws them on an interactive
terminal only (dvc.progress.Tqdm disables itself when stderr is not a TTY), so pods, CI and logs get
none. DVC's `Repo` API is used in-process rather
than the `dvc` command, whose messages are meant for a terminal.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from dino_model.errors import DataError
from dino_model.runtime import atomic
from dino_model.runtime import git as run_git
from dino_model.runtime.git import GitError
from dino_model.versioning.layout import DATA_DIR, DVC_FILE  # noqa: F401 - re-exported

if TYPE_CHECKING:
    from dvc.repo import Repo

logger = logging.getLogger(__name__)

DEFAULT_REMOTE = "local"  # name of the default remote in the committed .dvc/config
DEFAULT_REMOTE_DIR = ".dvc-remote"  # its directory, relative to the repository root (ignored by git)
DEFAULT_SITE_CACHE = Path("/var/tmp/dvc")  # DVC's default site cache on Linux
DVCIGNORE_EXTRA = "# operating-system litter never changes a data version\n.DS_Store\nThumbs.db\n"


def find_repo_root(start: str | Path | None = None) -> Path:
    """The nearest directory at or above `start` (default: the working directory) holding `.dvc/`."""
    here = Path(start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / ".dvc").is_dir():
            return candidate
    raise DataError(
        f"no DVC repository at or above {here} (looked for a .dvc/ folder); "
        "run from the project checkout, pass --repo PATH, or create one with `dino-mlops data init`"
    )


def init_repo(root: str | Path, *, remote_dir: str | Path | None = None, ignore_remote: bool = True) -> Path:
    """Create `.dvc/` and `.dvcignore` in `root` with a local default remote, staging nothing in git.

    This is `dvc init` without its `git add`: the caller decides what to commit. In a folder that is
    not a git repository the project is created with `core.no_scm` (versions then live only in the
    remote, not in history). With `ignore_remote`, a remote directory inside the work tree is added to
    `.gitignore` unless git already ignores it. Returns the repository root.
    """
    from dvc.config import Config
    from dvc.config_schema import RelPath

    root = Path(root).resolve()
    dvc_dir = root / ".dvc"
    if dvc_dir.is_dir():
        raise DataError(f"{dvc_dir} already exists; the repository is initialised")
    no_scm = _git_root(root) is None
    dvc_dir.mkdir(parents=True)
    (dvc_dir / ".gitignore").write_text("/config.local\n/tmp\n/cache\n")
    config = Config.init(str(dvc_dir))
    remote = Path(remote_dir).resolve() if remote_dir else root / DEFAULT_REMOTE_DIR
    with config.edit("repo") as conf:
        conf["core"]["analytics"] = False
        conf["core"]["remote"] = DEFAULT_REMOTE
        conf["remote"][DEFAULT_REMOTE] = {"url": RelPath(str(remote))}  # stored relative to .dvc/
        if no_scm:
            conf["core"]["no_scm"] = True
    from dvc.ignore import init as init_dvcignore

    ignore_file = Path(init_dvcignore(str(root)))
    ignore_file.write_text(ignore_file.read_text().rstrip("\n") + "\n" + DVCIGNORE_EXTRA)
    if ignore_remote and not no_scm and remote.is_relative_to(root):
        _ignore_in_git(root, remote)
    logger.info("initialised DVC in %s (default remote %r at %s%s)", root, DEFAULT_REMOTE, remote,
                ", no git" if no_scm else "")
    return root


@contextmanager
def open_repo(root: str | Path, *, site_cache_dir: str | Path | None = None) -> Iterator[Repo]:
    """A `dvc.repo.Repo` for `root`, closed afterwards; DVC failures while opening become DataError."""
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    _quiet_dvc_logging()
    root = Path(root).resolve()
    if not (root / ".dvc").is_dir():
        raise DataError(f"{root} is not a DVC repository (no .dvc/ folder); run `dino-mlops data init` there first")
    cache_dir = resolve_site_cache_dir(root, site_cache_dir)
    config = {"core": {"site_cache_dir": str(cache_dir)}} if cache_dir else None
    try:
        repo = Repo(str(root), config=config)
    except DvcException as exc:
        raise DataError(f"cannot open the DVC repository {root}: {exc}") from exc
    try:
        _finish_interrupted_switch(repo, root)
        yield repo
    finally:
        repo.close()


@contextmanager
def repo_lock(repo: Repo) -> Iterator[None]:
    """Hold DVC's repository lock (re-entrant within `repo`); DataError when another process holds it."""
    from dvc.lock import LockError
    from dvc.repo import lock_repo

    try:
        with lock_repo(repo):
            yield
    except LockError as exc:
        raise DataError(f"another process is working on the DVC repository {repo.root_dir} (it holds "
                        f"{repo.lock.lockfile}); wait for it to finish and run the command again") from exc


def _finish_interrupted_switch(repo: Repo, root: Path) -> None:
    """Complete (or clean up after) a data switch that a killed process left half-done (see switch.py)."""
    from dino_model.versioning.switch import finish, switch_dir

    if switch_dir(root).exists():
        with repo_lock(repo):
            finish(root)


def resolve_site_cache_dir(root: Path, explicit: str | Path | None = None) -> Path | None:
    """Where DVC keeps its per-repository index and state, or None to keep DVC's own choice.

    Order: `explicit`, `DVC_SITE_CACHE_DIR`, `core.site_cache_dir` in the repository's config, then
    DVC's default `/var/tmp/dvc` if it is writable, else a folder in the user's cache directory.
    """
    if explicit:
        return Path(explicit)
    if os.environ.get("DVC_SITE_CACHE_DIR"):
        return None
    from dvc.config import Config

    try:
        if Config(dvc_dir=str(root / ".dvc"))["core"].get("site_cache_dir"):
            return None
    except Exception as exc:  # an unreadable config is reported when the repository opens
        logger.debug("could not read %s/.dvc/config: %s", root, exc)
        return None
    probe = DEFAULT_SITE_CACHE if DEFAULT_SITE_CACHE.exists() else DEFAULT_SITE_CACHE.parent
    if os.access(probe, os.W_OK | os.X_OK):
        return None
    fallback = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dino-mlops" / "dvc-site"
    logger.info("%s is not writable; DVC's site cache goes to %s (set DVC_SITE_CACHE_DIR to choose)",
                DEFAULT_SITE_CACHE, fallback)
    return fallback


def _quiet_dvc_logging() -> None:
    """Drop the stdout handlers DVC installs on import, so its records reach the application's handlers."""
    from dvc.logger import LoggerHandler

    for name in ("dvc", "dvc_objects", "dvc_data"):
        dvc_logger = logging.getLogger(name)
        for handler in list(dvc_logger.handlers):
            if isinstance(handler, LoggerHandler):
                dvc_logger.removeHandler(handler)
        dvc_logger.setLevel(logging.WARNING)  # DVC's INFO lines are terminal hints ("To track the changes...")


def git(root: str | Path, *args: str, check: bool = True) -> str:
    """The stdout of `git -C root args...` (runtime/git.py); a failure is a DataError with git's message."""
    return run_git.output(args, cwd=root, check=check)


def _ignore_in_git(root: Path, path: Path) -> None:
    rel = "/" + path.relative_to(root).as_posix() + "/"
    if not run_git.succeeds(["check-ignore", "-q", rel.strip("/") + "/x"], cwd=root):
        gitignore = root / ".gitignore"
        text = gitignore.read_text() if gitignore.exists() else ""
        gitignore.write_text(text + ("" if not text or text.endswith("\n") else "\n") + rel + "\n")


def _git_root(path: Path) -> Path | None:
    try:
        proc = run_git.run(["rev-parse", "--show-toplevel"], cwd=path, check=False)
    except GitError:  # git is not installed, or did not answer
        return None
    return Path(proc.stdout.strip()) if proc.returncode == 0 else None


def has_git(root: str | Path) -> bool:
    """Whether `root` lies in a git work tree (versions can then be resolved through history)."""
    return _git_root(Path(root)) is not None


def restore_text(path: Path, text: str | None) -> None:
    """Put a file back as it was: `text`, or absent when `text` is None."""
    if text is None:
        path.unlink(missing_ok=True)
    else:
        atomic.write_text(path, text)
