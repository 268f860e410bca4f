"""The local pipeline's tritonserver: guarded like every server, and stopped only while it is ours.

A load request may carry a config and a `model.py` inline, which the Python backend runs as the
server's user; the server `dino-mlops pipeline run --local` leaves running refuses it without the
admin key, while the pipeline's deploy step (release) finds that key beside the repository.
`pipeline stop-local` never signals a process that merely inherited the recorded pid.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from fixtures.triton import http_load

from dino_model.runtime.processes import free_ports
from dino_model.serving.admin_key import ADMIN_KEY_ENV, admin_key_path
from dino_model.serving.deploy import deploy
from pipelines.local_server import (
    STATE_FILE,
    ensure_local_server,
    process_start_time,
    read_state,
    stop_local_server,
)

pytestmark = pytest.mark.triton


def test_the_local_pipeline_server_is_guarded_and_stop_local_stops_it(tmp_path: Path, tiny_onnx: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline's deploy step (release) finds the local server's key beside its repository."""
    monkeypatch.setenv(ADMIN_KEY_ENV, "a-key-of-another-server")  # the file beside the repository comes first
    state_dir = tmp_path / "triton"
    http, grpc, metrics = free_ports(3)
    server = ensure_local_server(state_dir, grpc_port=grpc, http_port=http, metrics_port=metrics)
    try:
        key_file = Path(server.admin_key_file)
        assert key_file == admin_key_path(server.repository) and key_file.stat().st_mode & 0o777 == 0o600
        marker = tmp_path / "ran-in-local-server"
        assert http_load(server.http_url, marker)[0] == 403 and not marker.exists()
        assert ensure_local_server(state_dir, grpc_port=grpc, http_port=http, metrics_port=metrics) == server
        result = deploy(tiny_onnx, server.repository, url=server.grpc_url, flavour="cpu")
        assert result["status"] == "deployed" and result["serving_versions"] == [1]
    finally:
        stopped = stop_local_server(state_dir)
    assert stopped and process_start_time(server.pid) is None
    assert not key_file.exists() and read_state(state_dir) is None


def test_stop_local_leaves_a_process_that_inherited_the_pid_alone(tmp_path: Path, run_cli, capsys) -> None:
    """The recorded server is gone and its pid now names an unrelated process, in its own process group."""
    state_dir = tmp_path / "local" / "triton"
    state_dir.mkdir(parents=True)
    unrelated = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        recorded = {"pid": unrelated.pid, "repository": str(state_dir / "repository"), "grpc_port": 8001,
                    "http_port": 8000, "metrics_port": 8002, "log": str(state_dir / "serve.log")}
        states = [recorded,  # as written before start times were recorded
                  recorded | {"started": process_start_time(unrelated.pid) - 1}]  # a process started earlier
        for state in states:
            (state_dir / STATE_FILE).write_text(json.dumps(state))
            assert run_cli(["pipeline", "stop-local", "--output-dir", str(tmp_path / "local")]) == 0
            captured = capsys.readouterr()
            assert json.loads(captured.out) == {"stopped": False}
            assert f"pid {unrelated.pid} now belongs to `sleep 300`, left alone" in captured.err
            assert not (state_dir / STATE_FILE).exists()
            time.sleep(0.5)
            assert unrelated.poll() is None, "stop-local signalled a process it did not start"
    finally:
        unrelated.kill()
        unrelated.wait()
