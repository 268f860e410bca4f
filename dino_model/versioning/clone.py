"""A data version the way a cluster provides it: a git URL of the data repository and a DVC remote.

A pipeline step runs in a pod whose image holds no repository. It clones the data repository
(credentials from the environment, filled from a Kubernetes Secret, never written into the clone's
config or a command line), points it at the remote the cluster provides (a mounted directory or an
S3-compatible bucket) and pulls exactly the requested version. A missing repository, revision or
remote object fails the step with one line: no fallback to any default data set.

`retrain check` reads a data repository the same way: `data_repository` is a local checkout as it is,
or a scratch clone of a git URL removed afterwards. git itself runs through runtime/git.py.
"""

from __future__ import annotations

import contextlib
import logging
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from dino_model.errors import DataError
from dino_model.runtime import git
from dino_model.runtime.git import CLONE_TIMEOUT_S, GitError, git_environment, public_url  # noqa: F401 - re-exported
from dino_model.versioning.remotes import add_remote
from dino_model.versioning.sync import checkout_version
from dino_model.versioning.versions import DataVersion

logger = logging.getLogger(__name__)

PIPELINE_REMOTE = "pipeline"  # the remote a step adds to its clone, in .dvc/config.local


def clone(url: str, dest: Path, *, timeout_s: float = CLONE_TIMEOUT_S) -> Path:
    """`git clone` of the data repository into `dest` (full history: versions are found by md5 in it)."""
    if not url:
        raise DataError("no data repository given: set the pipeline's data_repo to the git URL of the data repository")
    try:
        git.run(["clone", "--quiet", url, str(dest)], timeout_s=timeout_s)
    except GitError as exc:
        reason = exc.detail or f"it took over {timeout_s:.0f} s"
        raise DataError(f"cannot clone data repository {public_url(url)}: {reason}") from None
    if not (dest / ".dvc").is_dir():
        raise DataError(f"{public_url(url)} is not a DVC repository (no .dvc/ at its default branch)")
    return dest


def fetch_data_version(url: str, version: str, workdir: str | Path, *, remote_url: str = "",
                       endpoint_url: str | None = None) -> tuple[Path, DataVersion]:
    """Clone `url` under `workdir` and pull `version` (a git revision, a data md5, or "" for the default branch).

    Args:
        url: git URL of the data repository (https, ssh, file://, or a path).
        version: what to check out; "" takes data.dvc at the default branch's head.
        workdir: an empty, writable folder.
        remote_url: the DVC remote to pull from, replacing the repository's default (a mounted path or s3://).
        endpoint_url: S3-compatible endpoint for an s3:// remote (MinIO, Ceph).

    Returns:
        The clone's root and the version its data/ now holds, with the git revision that records it.
    """
    root = clone(url, Path(workdir) / "repo")
    if remote_url:
        add_remote(root, PIPELINE_REMOTE, remote_url, endpoint_url=endpoint_url, default=True, local=True)
    resolved = checkout_version(root, version or None, remote=PIPELINE_REMOTE if remote_url else None)
    rev = resolved.rev or ("" if version else _head(root))  # an md5 only the remote holds has no commit
    logger.info("data version %s from %s at git revision %s", resolved.md5, public_url(url), rev[:12])
    return root, DataVersion(md5=resolved.md5, nfiles=resolved.nfiles, size=resolved.size, rev=rev,
                             path=resolved.path)


def _head(root: Path) -> str:
    return git.output(["rev-parse", "HEAD"], cwd=root).strip()


def is_git_url(repo: str) -> bool:
    """True for what git clones over a transport (https://, ssh://, file://, user@host:path), not a local path."""
    return "://" in repo or re.match(r"^[\w.-]+@[\w.-]+:", repo) is not None


@contextlib.contextmanager
def data_repository(repo: str, *, workdir: str | Path = "", timeout_s: float = CLONE_TIMEOUT_S,
                    fetch: bool = False) -> Iterator[Path]:
    """A local checkout as it is (fetched first on request), or a fresh clone of a git URL removed afterwards."""
    if not is_git_url(repo):
        root = Path(repo).resolve()
        if fetch:
            git.run(["fetch", "--quiet"], cwd=root, timeout_s=timeout_s)
        yield root
        return
    if workdir:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="retrain-", dir=workdir or None) as scratch:
        yield clone(repo, Path(scratch) / "repo", timeout_s=timeout_s)


def tracked_rev(root: Path, rev: str) -> str:
    """In a fresh clone only the default branch is local: branch NAME is refs/remotes/origin/NAME."""
    ref = f"refs/remotes/origin/{rev}"
    return ref if git.succeeds(["show-ref", "--verify", "--quiet", ref], cwd=root) else rev
