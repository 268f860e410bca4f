"""A local Triton that outlives the command that started it, for the embedded main job.

`dino-mlops pipeline run --local` ends by handing users a live gRPC endpoint, so the server runs
as a detached `dino-mlops serve` process whose pid and ports are kept in a small state file;
the next run reuses it, and `stop_local_server` ends it cleanly (SIGTERM, Triton drains).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from dino_model.errors import ServingError

logger = logging.getLogger(__name__)

STATE_FILE = "server.json"


@dataclass(frozen=True)
class LocalServer:
    pid: int
    repository: str
    grpc_port: int
    http_port: int
    metrics_port: int
    log: str

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except OSError:
            return False
        return _ready(self.http_url)


def ensure_local_server(state_dir: str | Path, *, grpc_port: int = 8001, http_port: int = 8000,
                        metrics_port: int = 8002, startup_timeout_s: float = 120.0) -> LocalServer:
    """The running local server of `state_dir`, or a new detached one on an (empty) repository there."""
    state_dir = Path(state_dir).resolve()
    current = read_state(state_dir)
    if current is not None and current.alive():
        logger.info("reusing the local tritonserver (pid %d) at %s", current.pid, current.grpc_url)
        return current
    repository = state_dir / "repository"
    repository.mkdir(parents=True, exist_ok=True)
    log = state_dir / "serve.log"
    cmd = [sys.executable, "-m", "dino_model.cli", "serve", "--repository", str(repository),
           "--grpc-port", str(grpc_port), "--http-port", str(http_port), "--metrics-port", str(metrics_port)]
    with log.open("ab") as fh:
        process = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    server = LocalServer(process.pid, str(repository), grpc_port, http_port, metrics_port, str(log))
    deadline = time.monotonic() + startup_timeout_s
    while not _ready(server.http_url):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_pid(process.pid)
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-5:])
            raise ServingError(f"the local tritonserver did not become ready (see {log}):\n{tail}")
        time.sleep(0.5)
    (state_dir / STATE_FILE).write_text(json.dumps(asdict(server), indent=2))
    logger.info("local tritonserver (pid %d) ready at %s", server.pid, server.grpc_url)
    return server


def read_state(state_dir: str | Path) -> LocalServer | None:
    path = Path(state_dir) / STATE_FILE
    try:
        return LocalServer(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def stop_local_server(state_dir: str | Path, *, timeout_s: float = 30.0) -> bool:
    """Stop the server recorded in state_dir; False when none was running."""
    server = read_state(state_dir)
    (Path(state_dir) / STATE_FILE).unlink(missing_ok=True)
    return server is not None and stop_pid(server.pid, timeout_s=timeout_s)


def stop_pid(pid: int, *, timeout_s: float = 30.0) -> bool:
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
    os.killpg(pid, signal.SIGKILL)
    return True


def _reaped(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return done == pid


def _ready(http_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{http_url}/v2/health/ready", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False
