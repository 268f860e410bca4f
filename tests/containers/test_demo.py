"""The README's container demo, `bash scripts/demo.sh --containers`, from a clean clone, as a new user runs it.

No separate data repository: the demo versions the digits in the clone itself and mounts the checkout
read-only into every step, the local server's key file beside its model repository included, which is
what broke the deploy step before. The clone is of this checkout's HEAD (uncommitted changes are not in
it) and shares this checkout's `.venv` by a link, so bootstrap finds its stamp and installs nothing; the
image is built from the clone (cached layers). Afterwards the test stops the clone's Triton server with
the README's command and checks that the demo stopped the Docker daemon it started, or left alone one
that was already running, and said which.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.triton]
logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_TIMEOUT_S = 2400  # about 6 minutes on 2 idle cores; a loaded machine takes several times that


@pytest.fixture
def clean_clone() -> Iterator[Path]:
    """A clone of HEAD that uid 10001 (the image's user) may read, with this checkout's environment linked."""
    base = Path(tempfile.mkdtemp(prefix="demo-clone-"))
    base.chmod(0o755)
    clone = base / "dino-mlops"
    subprocess.run(["git", "clone", "-q", str(REPO_ROOT), str(clone)], check=True, timeout=120)
    (clone / ".venv").symlink_to(REPO_ROOT / ".venv")
    _require_installed_for(clone)
    try:
        yield clone
    finally:
        stop = subprocess.run([".venv/bin/dino-mlops", "pipeline", "stop-local"], cwd=clone, capture_output=True,
                              text=True, timeout=120)
        logger.info("stop-local: %s %s", stop.stdout, stop.stderr[-500:])
        shutil.rmtree(base, ignore_errors=True)


def _require_installed_for(clone: Path) -> None:
    """The linked environment was installed from this pyproject.toml, so the clone's bootstrap installs nothing
    (an install from the clone would point the shared environment's editable package at the clone)."""
    stamp = REPO_ROOT / ".venv" / ".dino-mlops-installed"
    wanted = hashlib.sha256((clone / "pyproject.toml").read_bytes()).hexdigest()
    if not stamp.is_file() or stamp.read_text().strip() != wanted:
        pytest.fail(f"{REPO_ROOT / '.venv'} was not installed from HEAD's pyproject.toml: run "
                    "`bash scripts/bootstrap.sh` (scripts/test.sh does) and commit pyproject.toml first")


def _summary(stdout: str) -> dict:
    """The JSON object the pipeline run prints last."""
    start = stdout.rfind("\n{")
    return json.loads(stdout[start + 1 if start >= 0 else stdout.index("{"):])


def _run_demo(clone: Path, *, timeout_s: float) -> subprocess.CompletedProcess:
    """The README's command in `clone`, in its own process group (all of it is stopped on a timeout)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DINO_") and k != "TRITON_ADMIN_KEY"}
    command = ["bash", "scripts/demo.sh", "--containers"]
    with subprocess.Popen(command, cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            stdout, stderr = process.communicate(timeout=120)
            pytest.fail(f"the demo took over {timeout_s:.0f} s; its output's end:\n{stdout[-2000:]}\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _daemon_running(env: dict[str, str]) -> bool:
    return subprocess.run(["docker", "info"], env=env, capture_output=True).returncode == 0


@pytest.mark.timeout(DEMO_TIMEOUT_S + 300)
def test_the_readme_container_demo_runs_end_to_end_from_a_clean_clone(docker_env, clean_clone: Path,
                                                                      capsys) -> None:
    was_running = _daemon_running(docker_env)
    demo = _run_demo(clean_clone, timeout_s=DEMO_TIMEOUT_S)
    with capsys.disabled():
        print(f"\n--- bash scripts/demo.sh --containers (exit {demo.returncode}), its output's end ---\n"
              f"{demo.stdout[-4000:]}\n{demo.stderr[-2500:]}")
    assert demo.returncode == 0, demo.stderr[-4000:]
    summary = _summary(demo.stdout)
    assert [m["version"] for m in summary["deployed"] if m["name"] == "dino"] == ["1"]  # entry points beside it
    assert summary["scores"]["knn_top1"] > 0 and {"model.onnx", "checkpoint.pth"} <= set(summary["artifacts"])
    assert re.fullmatch(r"127\.0\.0\.1:\d+", summary["endpoint"]["grpc"])

    from dino_model.serving.client import EmbeddingClient

    lineage = EmbeddingClient(summary["endpoint"]["grpc"], "dino").served.contract.lineage
    assert lineage["data_version"] == summary["data_version"]["md5"]
    assert "left running: the local Triton server" in demo.stderr
    if was_running:
        assert "already running" in demo.stderr and _daemon_running(docker_env)
    else:
        assert "stopped the Docker daemon it started" in demo.stderr and not _daemon_running(docker_env)
