"""Running git: one place for its timeout, its credentials and the error that names the command.

Data versions are git revisions of data.dvc, pipeline steps clone the data repository, and a lineage
record names the code's commit, so git runs from several layers. Every call goes through `run`: it
never waits on a prompt (GIT_TERMINAL_PROMPT=0), serves HTTPS credentials from DINO_GIT_USERNAME /
DINO_GIT_TOKEN through a credential helper (never on a command line or in a clone's config), stops
after a timeout, and turns a failure into one GitError that names the command (URLs without their
user:password part) and git's own message.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

from dino_model.errors import DataError

DEFAULT_TIMEOUT_S = 120.0  # a local command, or a fetch; `dino-mlops retrain --git-timeout` sets the remote ones
CLONE_TIMEOUT_S = 600.0
# git asks this helper for credentials over HTTPS; it reads them from the environment at that moment
_CREDENTIAL_HELPER = ('!f() { test "$1" = get || exit 0; echo "username=${DINO_GIT_USERNAME:-git}"; '
                      'echo "password=${DINO_GIT_TOKEN}"; }; f')


class GitError(DataError):
    """A git command failed or timed out; `detail` is git's last line of error output."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


def public_url(url: str) -> str:
    """`url` without any user:password part, for logs, errors and lineage."""
    return re.sub(r"(?<=://)[^/@]*@", "", url)


def git_environment() -> dict[str, str]:
    """The process environment plus, when DINO_GIT_TOKEN is set, a credential helper that serves it."""
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    if os.environ.get("DINO_GIT_TOKEN"):
        env |= {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "credential.helper",
                "GIT_CONFIG_VALUE_0": _CREDENTIAL_HELPER}
    return env


def run(args: Sequence[str], *, cwd: str | Path | None = None, timeout_s: float | None = DEFAULT_TIMEOUT_S,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """`git -C cwd args...` with captured text output; GitError when it times out or (with `check`) fails."""
    command = ["git", *(["-C", str(cwd)] if cwd is not None else []), *args]
    where = f" in {cwd}" if cwd is not None else ""
    try:
        proc = subprocess.run(command, env=git_environment(), capture_output=True, text=True, timeout=timeout_s,
                              check=False)
    except FileNotFoundError:
        raise GitError("git is not installed; data versions are git revisions of data.dvc "
                       "(apt-get install git)") from None
    except subprocess.TimeoutExpired:
        raise GitError(f"`{describe(args)}`{where} took over {timeout_s:.0f} s") from None
    if check and proc.returncode != 0:
        output = proc.stderr.strip() or proc.stdout.strip()
        detail = (output.splitlines() or ["no output"])[-1]
        raise GitError(f"`{describe(args)}` failed{where}: {output or 'no output'}", detail)
    return proc


def output(args: Sequence[str], *, cwd: str | Path | None = None, timeout_s: float | None = DEFAULT_TIMEOUT_S,
           check: bool = True) -> str:
    """The stdout of `run(args, ...)`."""
    return run(args, cwd=cwd, timeout_s=timeout_s, check=check).stdout


def succeeds(args: Sequence[str], *, cwd: str | Path | None = None,
             timeout_s: float | None = DEFAULT_TIMEOUT_S) -> bool:
    """Whether `git args...` exits 0 (a question such as `show-ref --verify` or `check-ignore`)."""
    return run(args, cwd=cwd, timeout_s=timeout_s, check=False).returncode == 0


def describe(args: Sequence[str]) -> str:
    """The command as errors show it, with credentials taken out of any URL."""
    return " ".join(["git", *map(public_url, args)])
