"""Server processes the platform runs as children: started, awaited on a ready URL, stopped.

Triton, Prometheus and the Pushgateway are all run the same way: a binary with its log in a file,
ready once an HTTP endpoint answers 200, stopped with SIGTERM (each drains or flushes on it) and
SIGKILL only when it lingers. Callers phrase their own errors from the reason `wait_ready` returns,
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
