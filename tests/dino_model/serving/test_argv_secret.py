"""No local user can read a running tritonserver's admin key: not in any command line, not in any environment.

The probe runs as uid 65534 (setpriv) and reads every /proc/<pid>/cmdline and /proc/<pid>/environ it is
allowed to, while a real tritonserver started the project's way holds a key, and while the local
pipeline's server (a `dino-mlops serve` child) does. The key must still open model control.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dino_model.runtime.processes import free_ports
from dino_model.serving.admin_key import admin_headers
from dino_model.serving.client import EmbeddingClient
from dino_model.serving.deploy import deploy

pytestmark = pytest.mark.triton

PROBE = """
import os, sys
key = sys.stdin.read().encode()  # not an argument: the probe would find itself
seen = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    for part in ("cmdline", "environ"):
        try:
            with open(f"/proc/{pid}/{part}", "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        seen.append(part)
        if key in data:
            print(f"FOUND in /proc/{pid}/{part}")
print(f"read {seen.count('cmdline')} command lines and {seen.count('environ')} environments")
"""


def _probe_as_nobody(key: str) -> str:
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to look as another user")
    result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                             PROBE], input=key, capture_output=True, text=True, timeout=120, cwd="/")
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_no_other_user_reads_the_key_of_a_running_server(start_server, tmp_path: Path, tiny_onnx: Path) -> None:
    repository = tmp_path / "repository"
    repository.mkdir()
    server = start_server(repository, admin_key="an-operator-key-nobody-else-may-see-0123456789")
    seen = _probe_as_nobody(server.admin_key)
    assert "FOUND" not in seen, seen
    assert int(seen.split()[1]) > 10, f"the probe read too little to mean anything: {seen}"
    cmdline = Path(f"/proc/{server.process.pid}/cmdline").read_bytes().decode().split("\0")
    assert any("admin-key=@DINO_ARGV_SECRET@" in arg for arg in cmdline), cmdline
    result = deploy(tiny_onnx, repository, url=server.grpc_url, flavour="cpu", headers=server.admin_headers)
    assert result["serving_versions"] == [1], "the key Triton parsed is the one it was given"
    index = EmbeddingClient(server.grpc_url, headers=admin_headers("a-wrong-key")).raw
    with pytest.raises(Exception, match="(?i)admin|restricted|unauthenticated"):
        index.get_model_repository_index()


def test_no_other_user_reads_the_key_of_the_served_command(tmp_path: Path) -> None:
    """`dino-mlops serve` with a key file: the file is 0600, and neither process shows the key."""
    from dino_model.runtime import processes

    repository = tmp_path / "repository"
    repository.mkdir()
    key_file = tmp_path / "key"
    key_file.write_text("a-served-key-nobody-else-may-see-9876543210\n")
    key_file.chmod(0o600)
    http, grpc, metrics = free_ports(3)
    serve = subprocess.Popen([sys.executable, "-m", "dino_model.cli", "serve", "--repository", str(repository),
                              "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
                              "--admin-key-file", str(key_file)], start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert processes.wait_ready(serve, f"http://127.0.0.1:{http}/v2/health/ready", timeout_s=120) is None
        seen = _probe_as_nobody("a-served-key-nobody-else-may-see-9876543210")
        assert "FOUND" not in seen, seen
    finally:
        processes.stop(serve, timeout_s=30, group=True)
