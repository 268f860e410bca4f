"""Advisory file locks with a deadline: one process at a time in a deploy, a retraining check, ...

Two deploys of one model folder, or two retraining checks of one state file, must not interleave;
they may run in different processes (a CronJob and a person), so the lock is an flock on a file or a
folder, released by the kernel when the holder dies. A caller either fails at once (`timeout_s=0`) or
waits up to its deadline, and then phrases its own error from LockBusyError, since only it knows who the
other holder probably is. The Triton Python backend (triton/python_backend/model.py) keeps its own
flock: it runs in Triton's stub, which imports nothing of this package.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class LockBusyError(Exception):
    """Another process held the lock on `path` for all of `waited_s` seconds."""

    def __init__(self, path: Path, waited_s: float) -> None:
        super().__init__(f"{path} is locked by another process (waited {waited_s:.0f} s)")
        self.path, self.waited_s = path, waited_s


@contextmanager
def exclusive(path: str | Path, *, timeout_s: float = 0.0, poll_s: float = 0.1) -> Iterator[None]:
    """Hold an exclusive flock on `path` (a folder, or a file created when missing) for the block."""
    path = Path(path)
    fd = os.open(path, os.O_RDONLY) if path.is_dir() else os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _acquire(fd, path, timeout_s, poll_s)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _acquire(fd: int, path: Path, timeout_s: float, poll_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise LockBusyError(path, timeout_s) from None
            time.sleep(poll_s)
