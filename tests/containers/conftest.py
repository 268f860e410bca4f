"""The project image, built once per session by scripts/image.sh (cached layers) on a private daemon.

Skipped where no container engine can run (not root, no Docker): unless DINO_REQUIRE_CONTAINERS=1, as
in CI, where a missing engine is a failure. The daemon is stopped again if this session started it.
The trained and exported tiny model comes from tests/fixtures/export.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "image.sh"


def _unavailable(reason: str) -> None:
    if os.environ.get("DINO_REQUIRE_CONTAINERS") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def _docker_host() -> str:
    out = subprocess.run(["bash", str(SCRIPT), "env"], capture_output=True, text=True, check=True).stdout
    return out.strip().split("=", 1)[1]


@pytest.fixture(scope="session")
def docker_env() -> Iterator[dict[str, str]]:
    """Environment for `docker` commands against the project's daemon (started here if needed)."""
    if os.geteuid() != 0 and not shutil.which("dockerd"):
        _unavailable("no container engine: the image tests need root (to install docker.io) or a Docker daemon")
    env = {**os.environ, "DOCKER_HOST": _docker_host()}
    was_running = subprocess.run(["docker", "info"], env=env, capture_output=True).returncode == 0 \
        if shutil.which("docker") else False
    yield env
    if not was_running:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True)


@pytest.fixture(scope="session")
def image(docker_env: dict[str, str]) -> str:
    """The project image's name, built from this checkout (only changed layers rebuild)."""
    result = subprocess.run(["bash", str(SCRIPT), "build"], env=docker_env, capture_output=True, text=True,
                            timeout=3600)
    if result.returncode != 0:
        pytest.fail(f"scripts/image.sh build failed:\n{result.stderr[-3000:]}")
    from components._image import IMAGE

    return IMAGE


@pytest.fixture(scope="session")
def docker(docker_env: dict[str, str]):
    """`docker(*args)` against the project's daemon; returns the completed process."""

    def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(["docker", *args], env=docker_env, capture_output=True, text=True, timeout=timeout)

    return run


@pytest.fixture(scope="session")
def podman_env(docker_env: dict[str, str]) -> dict[str, str]:
    """Environment for `podman` with the machine's settings (runc, no ulimits) and the project image loaded."""
    if not shutil.which("podman") and os.geteuid() != 0:
        _unavailable("podman is not installed (Debian: apt-get install podman runc catatonit slirp4netns)")
    result = subprocess.run(["bash", str(SCRIPT), "podman"], env=docker_env, capture_output=True, text=True,
                            timeout=3600)
    if result.returncode != 0:
        pytest.fail(f"scripts/image.sh podman failed:\n{result.stderr[-3000:]}")
    conf = next(line for line in result.stdout.splitlines() if line.startswith("CONTAINERS_CONF="))
    return {**docker_env, "CONTAINERS_CONF": conf.split("=", 1)[1]}


@pytest.fixture(scope="session")
def podman(podman_env: dict[str, str]):
    """`podman(*args)` with the project's settings; returns the completed process."""

    def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(["podman", *args], env=podman_env, capture_output=True, text=True, timeout=timeout)

    return run
