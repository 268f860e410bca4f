"""Server processes the platform runs as children: started, awaited on a ready URL, stopped.

Triton, Prometheus and the Pushgateway are all run the same way: a binary with its log in a file,
ready once an HTTP endpoint answers 200, stopped with SIGTERM (each drains or flushes on it) and
SIGKILL only when it lingers. `stop` ends a child this process started; `stop_pid` ends one that an
earlier command started and recorded by pid (the local Triton of `pipeline run --local`), signalled only
while the pid still names that process. Callers phrase their own errors from the reason `wait_ready` returns,
since only they know which log lines explain a failure.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

logger = logging.getLogger(__name__)


def free_ports(n: int, address: str = "127.0.0.1") -> list[int]:
    """n distinct ports that were free a moment ago (all sockets are held until all are chosen)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind((address, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def is_ready(url: str, timeout_s: float = 2.0) -> bool:
    """True when `url` answers HTTP 200 within `timeout_s`."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_ready(process: subprocess.Popen, url: str, *, timeout_s: float, poll_s: float = 0.25) -> str | None:
    """None once `url` answers 200; else why not: the process exited, or `timeout_s` passed."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"exited with code {process.returncode}"
        if is_ready(url):
            return None
        time.sleep(poll_s)
    return f"was not ready at {url} within {timeout_s:.0f} s"


def stop(process: subprocess.Popen, *, timeout_s: float = 15.0, group: bool = False) -> int | None:
    """SIGTERM, then SIGKILL (of its process group when `group`) after `timeout_s`; the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("pid %d ignored SIGTERM for %.0f s: killing it", process.pid, timeout_s)
            os.killpg(process.pid, signal.SIGKILL) if group else process.kill()
            process.wait()
    return process.returncode


def stop_pid(pid: int, *, timeout_s: float = 30.0, started: int | None = None) -> bool:
    """SIGTERM `pid`, then SIGKILL its process group after `timeout_s`; with `started`, only while the pid
    still names the process that started at that time (see process_start_time)."""
    def same() -> bool:
        return started is None or process_start_time(pid) == started

    if not same():
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError:
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            if _reaped(pid):
                return True
        except OSError:
            return True
        time.sleep(0.2)
    if same():
        os.killpg(pid, signal.SIGKILL)
    return True


def process_start_time(pid: int) -> int | None:
    """When `pid` started, in clock ticks after boot (field 22 of /proc/<pid>/stat); None if there is none.

    A pid is reused once its process is gone; the pair (pid, start time) names one process.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the command name in parentheses may hold spaces
    return int(fields[19]) if len(fields) > 19 else None


def process_command(pid: int) -> list[str]:
    """The command line of `pid` ([] if there is none)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _reaped(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return done == pid
