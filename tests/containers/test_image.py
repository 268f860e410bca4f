"""The project image run as the cluster runs it: non-root, read-only root filesystem, host network.

These start real containers from the image built by scripts/image.sh; a Kubernetes API server is the
one thing not here (pods are played from the manifests elsewhere).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

POD_LIKE = ["run", "--rm", "--network=host", "--read-only", "--tmpfs", "/tmp", "--user", "10001:10001",
            "-e", "HOME=/tmp"]


def test_the_command_runs_from_the_installed_package(image: str, docker) -> None:
    out = docker(*POD_LIKE, image, "python", "-c",
                 "import dino_model, sys; from dino_model.cli.main import main; print(dino_model.__file__); "
                 "sys.argv = ['dino-mlops', '--help']; main()")
    assert out.returncode == 0, out.stderr
    assert "/opt/venv/lib/" in out.stdout and "usage: dino-mlops" in out.stdout
    out = docker(*POD_LIKE, image, "dino-mlops", "pretrain", "--help")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr


def test_training_runs_inside_the_image_as_the_pod_user(image: str, docker) -> None:
    script = ("set -e; dino-mlops data materialize digits /tmp/digits; "
              "dino-mlops pretrain --config tiny data.root=/tmp/digits/train train.epochs=1 "
              "--output-dir /tmp/run; python -c \"import torch; "
              "c = torch.load('/tmp/run/checkpoint.pth', weights_only=False); print('epoch', c['epoch'])\"")
    out = docker(*POD_LIKE, image, "bash", "-c", script, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "epoch 1" in out.stdout


def test_a_pipeline_component_runs_in_the_image_through_kfp_docker_runner(
        image: str, docker_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kfp import local

    from components.deploy import quality_gate

    monkeypatch.setenv("DOCKER_HOST", docker_env["DOCKER_HOST"])
    root = tmp_path / "pipeline-root"
    root.mkdir()
    os.chown(root, 10001, 10001)  # the image's user writes the step's outputs
    local.init(runner=local.DockerRunner(network_mode="host"), pipeline_root=str(root))
    task = quality_gate(knn_top1=61.5, min_top1=50.0, require_not_worse=False, triton_url="", model_name="dino")
    assert task.output == "deploy"
    task = quality_gate(knn_top1=41.5, min_top1=50.0, require_not_worse=False, triton_url="", model_name="dino")
    assert task.output == "hold"


def test_the_build_recorded_what_it_built(image: str, docker) -> None:
    """scripts/image.sh records the image ID; with no registry there is no manifest digest, so the
    components keep referencing the tag (docs/operations.md, "Images by digest")."""
    from components._image import image_cache, recorded_digest

    record = image_cache() / "digests" / re.sub(r"[/:@]", "_", image)
    fields = dict(line.split(" ", 1) for line in record.read_text().splitlines())
    out = docker("image", "inspect", "--format", "{{json .}}", image)
    assert out.returncode == 0, out.stderr
    inspected = json.loads(out.stdout)
    assert fields["image"] == image and fields["id"] == inspected["Id"]
    assert ("registry" in fields) == bool(inspected.get("RepoDigests"))
    assert recorded_digest(image) is None and "@" not in image


def test_the_image_holds_exactly_the_locked_versions(image: str, docker) -> None:
    """Every installed distribution but the project itself is the lock's pin, and pip finds nothing missing."""
    out = docker(*POD_LIKE, image, "bash", "-c",
                 "python -c 'import sys; print(\"%d%d\" % sys.version_info[:2])'; pip check; pip freeze --all")
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    lock = Path(__file__).resolve().parents[2] / "requirements" / f"image-py{lines[0]}.lock"
    pins = dict(re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", lock.read_text(), flags=re.M))
    pins = {re.sub(r"[-_.]+", "-", k).lower(): v for k, v in pins.items()}
    installed = dict(re.findall(r"^([A-Za-z0-9._-]+)==(\S+)$", "\n".join(lines[1:]), flags=re.M))
    installed = {re.sub(r"[-_.]+", "-", k).lower(): v for k, v in installed.items()}
    installed.pop("dino-mlops", None)  # the project itself (`name==version` or `name @ file://...`)
    assert re.search(r"^dino[-_]mlops( @ file://|==)", out.stdout, flags=re.M), out.stdout
    assert installed == pins, {k: (installed.get(k), pins.get(k)) for k in set(installed) ^ set(pins) | {
        k for k in set(installed) & set(pins) if installed[k] != pins[k]}}
