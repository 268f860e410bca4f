"""Two nodes of the dev TrainJob (Kubeflow Trainer v2), run by the Kubeflow SDK's own container runner from
the project image, train as one process does.

The TrainJob is built as `dino-mlops pretrain --cluster --operator trainer-v2` builds it (the dev overlay's
template and config, the repository's TrainingRuntime from k8s/jobs/trainjob), and handed to
`TrainerClient(backend_config=ContainerBackendConfig(...))`: two containers of the image on a Docker network of
the job's own, torch.distributed over gloo between them. The runtime comes from the repository file only (any
attempt to fetch one fails the test). tests/fixtures/trainjob_play.py lists every difference from Trainer v2 on
a cluster. The checkpoint must equal that of one process with twice the per-process batch in the same image,
within the tolerance the PyTorchJob pods are held to (tests/fixtures/ddp_equivalence.py).
"""

from __future__ import annotations

import logging
import shutil
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from fixtures import trainjob_play
from fixtures.ddp_equivalence import BATCH, assert_trains_like_one_process, digits_subset, one_epoch_config

from dino_model.config import load_config_text
from dino_model.train import cluster
from dino_model.train.cluster import trainjob
from dino_model.train.cluster.job import JobOptions

pytestmark = pytest.mark.slow
logger = logging.getLogger(__name__)

TIMEOUT_S = 600


def _job(image: str, name: str, batch: int) -> tuple[dict[str, Any], dict[str, Any]]:
    template, text = cluster.template_parts(cluster.render_overlay("dev"))
    runtime = trainjob.runtime_parts(cluster.render_runtime())
    cfg = cluster.cluster_config(load_config_text(one_epoch_config(text, batch)), name, gpus=False)
    options = JobOptions(name=name, nodes=2, nproc_per_node=1, image=image)
    return trainjob.build_trainjob(template, runtime, options, cluster.config_yaml(cfg)), runtime


def _single_process(docker, image: str, config_text: str, data: Path, work: Path) -> Path:
    """The same image, config (batch 2 x BATCH, moved as the play moves it) and data: one process, no torchrun."""
    runs = work / "runs"
    runs.mkdir(parents=True)
    runs.chmod(0o777)
    name = f"dino-pretrain-single-{uuid.uuid4().hex[:8]}"
    result = docker("run", "--rm", "--name", name, "--network=none", "--read-only", "--tmpfs", "/tmp",
                    "--shm-size", "512m", "-e", "HOME=/tmp", "-e", f"DINO_CONFIG_YAML={config_text}",
                    "-v", f"{data}:{trainjob_play.MOUNTS['/data']}:ro", "-v", f"{runs}:{trainjob_play.MOUNTS['/runs']}",
                    image, "python", "-m", "dino_model.train.worker", "--config-env", "DINO_CONFIG_YAML",
                    timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return runs


def test_two_trainjob_nodes_train_like_one_process(image: str, docker, docker_env: dict[str, str],
                                                   digits_root: Path, tmp_path: Path, monkeypatch) -> None:
    """Kubeflow SDK container backend, two nodes of the dev TrainJob, gloo: one checkpoint equal to a single process."""
    from kubeflow.trainer import ContainerBackendConfig, TrainerClient, TrainingRuntimeSource
    from kubeflow.trainer.options import Name

    def no_fetch(url, *args, **kwargs):
        raise AssertionError(f"the runtime must come from the repository, not {url}")

    monkeypatch.setattr(urllib.request, "urlopen", no_fetch)
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))  # the SDK's work folders: $HOME/.kubeflow/trainer/containers/<job>
    name = cluster.job_name(f"play-{uuid.uuid4().hex[:8]}")
    job, runtime = _job(image, name, BATCH)
    play = trainjob_play.translate(job, runtime, home)
    data = digits_subset(digits_root, tmp_path / "data")
    trainjob_play.prepare_workdir(play, {trainjob_play.MOUNTS["/data"]: data})
    client = TrainerClient(backend_config=ContainerBackendConfig(
        container_runtime="docker", container_host=docker_env["DOCKER_HOST"], pull_policy="Never",
        runtime_source=TrainingRuntimeSource(sources=[str(play.runtime_file)])))
    assert client.get_runtime("dino-pretrain").trainer.image == trainjob.node_container(runtime)["image"]

    start = time.monotonic()
    client.train(runtime="dino-pretrain", trainer=play.trainer, options=[Name(name=name)])
    try:
        network = docker("network", "inspect", "--format", "{{.Name}} {{len .Containers}}", f"{name}-net")
        done = client.wait_for_job_status(name, status={"Complete"}, timeout=TIMEOUT_S, polling_interval=3)
        seconds = time.monotonic() - start
        logs = "".join(client.get_job_logs(name))
        distributed = tmp_path / "trainjob"
        shutil.copytree(play.host_path(play.output_dir), distributed / name)
    finally:
        client.delete_job(name)
    logger.info("TrainJob %s: 2 nodes trained in %.0f s; changes: %s", name, seconds, play.changes)
    assert network.returncode == 0 and network.stdout.split() == [f"{name}-net", "2"], network.stderr
    assert docker("network", "inspect", f"{name}-net").returncode != 0, "the job's network is removed with it"
    assert done.num_nodes == 2 and [s.name for s in done.steps] == ["node-0", "node-1"]
    assert "rank 0 of 2, backend gloo" in logs, logs[-3000:]

    single_job, _ = _job(image, name, 2 * BATCH)
    single_config, _ = trainjob_play.moved_config(
        next(e["value"] for e in single_job["spec"]["trainer"]["env"] if e["name"] == "DINO_CONFIG_YAML"), [])
    single = _single_process(docker, image, single_config, data, tmp_path / "single")
    worst = assert_trains_like_one_process(distributed / name / "checkpoint.pth", single / name / "checkpoint.pth")
    logger.info("largest teacher difference, 2 TrainJob nodes vs 1 process: %.2e", worst)
