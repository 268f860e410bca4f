"""Every pipeline step in the project image, as a KFP backend runs it: kfp.local's DockerRunner.

Each step runs in its own container from the image (never the checkout), as the image's non-root
user with a read-only root filesystem, on the host network (Triton and the Pushgateway are reached
at their host addresses). What a cluster would mount into the step's pod is bind-mounted at the
same path: the pipeline root (by kfp.local), a local data repository and DVC remote (read-only),
and the Triton model repository the deploy step writes into.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from dino_model.errors import PipelineError

logger = logging.getLogger(__name__)

IMAGE_UID = 10001  # the image's user (Dockerfile USER), as the manifests run it


def docker_runner(*, read_only: Iterable[Path] = (), writable: Iterable[Path] = (), owned: Iterable[Path] = (),
                  environment: dict[str, str] | None = None):
    """A DockerRunner whose steps see `read_only` and `writable` host folders at the same paths.

    `owned` folders are made writable for the image's user but not mounted here (kfp.local mounts
    the pipeline root itself).
    """
    from kfp import local

    _require_image()
    writable = [Path(p).resolve() for p in writable]
    for path in [*writable, *(Path(p).resolve() for p in owned)]:
        make_writable_for_image(path)
    mounts = [_bind(Path(p).resolve(), read_only=True) for p in read_only] + [_bind(p, read_only=False)
                                                                               for p in writable]
    env = {"HOME": "/tmp", **(environment or {})}
    return local.DockerRunner(network_mode="host", mounts=mounts, environment=env, read_only=True,
                              tmpfs={"/tmp": "exec"}, shm_size="1g", user=f"{IMAGE_UID}:{IMAGE_UID}")


def make_writable_for_image(path: Path) -> None:
    """Give the image's user the folder (root: chown; otherwise open it up, it is this user's local run)."""
    path.mkdir(parents=True, exist_ok=True)
    for item in [path, *path.rglob("*")]:
        if os.geteuid() == 0:
            os.chown(item, IMAGE_UID, IMAGE_UID, follow_symlinks=False)
        elif not item.is_symlink():
            item.chmod(item.stat().st_mode | 0o777 if item.is_dir() else item.stat().st_mode | 0o666)


def _bind(path: Path, *, read_only: bool):
    from docker.types import Mount

    if not path.exists():
        raise PipelineError(f"cannot mount {path} into the pipeline's containers: it does not exist")
    return Mount(target=str(path), source=str(path), type="bind", read_only=read_only)


def _require_image() -> None:
    import docker

    from components._image import IMAGE

    try:
        client = docker.from_env()
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        raise PipelineError(f"the project image {IMAGE} is not in the Docker daemon at "
                            f"{os.environ.get('DOCKER_HOST', 'the default socket')}: build it with "
                            "`bash scripts/image.sh build`") from None
    except docker.errors.DockerException as exc:
        raise PipelineError(f"no Docker daemon to run the pipeline's containers ({exc}); start one with "
                            "`bash scripts/image.sh daemon` and export the DOCKER_HOST it prints") from None
