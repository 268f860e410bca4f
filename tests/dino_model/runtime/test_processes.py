"""Child server processes: real children (Python's http.server, a shell ignoring SIGTERM), no stand-ins."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from dino_model.runtime.processes import free_ports, is_ready, stop, wait_ready


def test_free_ports_are_distinct_and_bindable() -> None:
    import socket

    ports = free_ports(5)
    assert len(set(ports)) == 5
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_server_is_awaited_then_stopped_with_sigterm(tmp_path) -> None:
    (port,) = free_ports(1)
    process = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                               cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_ready(process, f"http://127.0.0.1:{port}/", timeout_s=30) is None
        assert is_ready(f"http://127.0.0.1:{port}/")
    finally:
        code = stop(process, timeout_s=10)
    assert code == -signal.SIGTERM
    assert not is_ready(f"http://127.0.0.1:{port}/", timeout_s=0.5)


def test_an_early_exit_and_a_timeout_are_named() -> None:
    (port,) = free_ports(1)
    exited = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    assert wait_ready(exited, f"http://127.0.0.1:{port}/", timeout_s=30) == "exited with code 3"
    silent = subprocess.Popen(["sleep", "30"])
    try:
        assert wait_ready(silent, f"http://127.0.0.1:{port}/", timeout_s=0.5) == \
            f"was not ready at http://127.0.0.1:{port}/ within 0 s"
    finally:
        stop(silent, timeout_s=5)


def test_a_process_ignoring_sigterm_is_killed_with_its_group() -> None:
    process = subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 60 & wait"], start_new_session=True)
    time.sleep(0.3)  # let the shell install its trap
    started = time.monotonic()
    code = stop(process, timeout_s=1, group=True)
    assert code == -signal.SIGKILL and time.monotonic() - started < 10
