"""A local Triton that outlives the command that started it, for the embedded main job.

`dino-mlops pipeline run --local` ends by handing users a live gRPC endpoint, so the server runs
as a detached `dino-mlops serve` process whose pid and ports are kept in a small state file;
the next run reuses it, and `stop_local_server` ends it cleanly (SIGTERM, Triton drains).

Its repository API is restricted like every server's here: a fresh admin key, mode 0600, is written
beside the repository (`<state>/repository.admin-key`), where the pipeline's deploy step finds it.
A pid outlives its process, so the state also records the process's start time (from /proc) and
nothing is signalled unless the pid still names that very process: a stale state file is removed
and whatever now holds the pid is left alone.
"""

from __future__ import annotations

import json
import logging
import secrets
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from dino_model.errors import ServingError
from dino_model.runtime import processes
from dino_model.runtime.processes import process_command, process_start_time, stop_pid
from dino_model.serving.admin_key import admin_key_path, write_admin_key
from dino_model.serving.client import GRPC_PORT, HTTP_PORT, METRICS_PORT

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
    started: int = 0  # the process's start time (clock ticks after boot, /proc/<pid>/stat); 0 in old states
    admin_key_file: str = ""  # empty in states of servers started without a key

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def is_ours(self) -> bool:
        """True while `pid` still names the `dino-mlops serve` process this state was written for."""
        if self.started:
            return process_start_time(self.pid) == self.started
        command = process_command(self.pid)  # an older state without a start time: match the command line
        return "serve" in command and self.repository in command

    def alive(self) -> bool:
        return self.is_ours() and processes.is_ready(f"{self.http_url}/v2/health/ready")


def ensure_local_server(state_dir: str | Path, *, grpc_port: int = GRPC_PORT, http_port: int = HTTP_PORT,
                        metrics_port: int = METRICS_PORT, startup_timeout_s: float = 120.0) -> LocalServer:
    """The running local server of `state_dir`, or a new detached one on an (empty) repository there."""
    state_dir = Path(state_dir).resolve()
    current = read_state(state_dir)
    if current is not None and current.alive():
        if current.admin_key_file:
            logger.info("reusing the local tritonserver (pid %d) at %s", current.pid, current.grpc_url)
            return current
        logger.warning("restarting the local tritonserver (pid %d): it runs without an admin key", current.pid)
        stop_local_server(state_dir)
    repository = state_dir / "repository"
    repository.mkdir(parents=True, exist_ok=True)
    key_file = write_admin_key(admin_key_path(repository), secrets.token_urlsafe(32))
    log = state_dir / "serve.log"
    cmd = [sys.executable, "-m", "dino_model.cli", "serve", "--repository", str(repository),
           "--grpc-port", str(grpc_port), "--http-port", str(http_port), "--metrics-port", str(metrics_port),
           "--admin-key-file", str(key_file)]
    with log.open("ab") as fh:
        try:
            process = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        except OSError:
            key_file.unlink(missing_ok=True)
            raise
    server = LocalServer(process.pid, str(repository), grpc_port, http_port, metrics_port, str(log),
                         started=process_start_time(process.pid) or 0, admin_key_file=str(key_file))
    reason = processes.wait_ready(process, f"{server.http_url}/v2/health/ready", timeout_s=startup_timeout_s,
                                  poll_s=0.5)
    if reason is not None:
        stop_pid(process.pid)
        key_file.unlink(missing_ok=True)
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-5:])
        raise ServingError(f"the local tritonserver {reason} (see {log}):\n{tail}")
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
    """Stop the server recorded in state_dir; False when none was running.

    The state file is removed either way; a pid that no longer names the recorded server is not signalled.
    """
    server = read_state(state_dir)
    (Path(state_dir) / STATE_FILE).unlink(missing_ok=True)
    if server is None:
        return False
    if not server.is_ours():
        command = process_command(server.pid)
        now = f"; pid {server.pid} now belongs to `{' '.join(command)[:120]}`, left alone" if command else ""
        logger.warning("the local tritonserver recorded in %s (pid %d) is gone%s; removed the stale state",
                       state_dir, server.pid, now)
        return False
    stopped = stop_pid(server.pid, timeout_s=timeout_s, started=server.started or None)
    if server.admin_key_file:
        Path(server.admin_key_file).unlink(missing_ok=True)
    return stopped
