"""The pipeline's multi-node side, played apart from kfp.local: the launcher step in its container creates the
run's TrainJob through the Kubernetes API, waits for it, and hands evaluation a model folder holding the
trained checkpoint.

kfp.local runs the pipeline's one-node side only: the `nodes > 1` branch needs a Kubernetes API, an operator
and the runs claim. Here each of those is played on this machine:
- the step `pretrain_on_cluster` runs in the project image through kfp.local's DockerRunner (non-root,
  read-only root), with a kubeconfig pointing at tests/fixtures/kube_api.py, which holds the launcher to
  the rights of k8s/base/training/launcher-rbac.yaml and reads the TrainJob with Kubeflow Trainer's models;
- the operator's part: the TrainJob the step created is trained by the Kubeflow SDK's container backend
  (tests/fixtures/trainjob_play.py: two nodes from the image, the repository's TrainingRuntime), and its
  condition set to Complete (or Failed with the SDK's message) when the containers finish;
- the runs claim: the SDK's work folder of the job, mounted into the step where the claim would be.
The model the step outputs is then scored by the pipeline's own `eval_knn` component body, unchanged.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from fixtures import kube_api, trainjob_play
from fixtures.ddp_equivalence import digits_subset

from dino_model.config import load_config_text
from dino_model.train import cluster
from dino_model.train.cluster import trainjob

pytestmark = pytest.mark.slow
logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
RBAC = REPO_ROOT / "k8s" / "base" / "training" / "launcher-rbac.yaml"
NAMESPACE = "dino-mlops-dev"  # the dev overlay's
TIMEOUT_S = 600
KEY = ("trainer.kubeflow.org", "trainjobs", NAMESPACE)


def _operator(api: kube_api.KubeApi, client: Any, runtime: dict[str, Any], home: Path, data: Path):
    """What Kubeflow Trainer does with a created TrainJob, played by the SDK's container backend."""
    from kubeflow.trainer.options import Name

    def run(job: dict[str, Any]) -> None:
        name = job["metadata"]["name"]
        try:
            play = trainjob_play.translate(job, runtime, home)
            trainjob_play.prepare_workdir(play, {trainjob_play.MOUNTS["/data"]: data})
            client.train(runtime=runtime["metadata"]["name"], trainer=play.trainer, options=[Name(name=name)])
            api.set_condition(*KEY, name, {"type": "Created", "reason": "TrainJobCreated", "message": "created"})
            client.wait_for_job_status(name, status={"Complete"}, timeout=TIMEOUT_S, polling_interval=3)
            api.set_condition(*KEY, name, {"type": "Complete", "reason": "JobsCompleted", "message": "completed"})
        except Exception as exc:  # the operator reports every failure as the job's condition
            api.set_condition(*KEY, name, {"type": "Failed", "reason": "JobsFailed", "message": str(exc)[-2000:]})

    return run


def _digits_version(digits_root: Path, tmp_path: Path, monkeypatch) -> str:
    """The digits as a DVC version on a local remote, by reference: how the pipeline's steps receive data."""
    import shutil

    from dino_model.versioning.mirror import LOCAL_CACHE_ENV
    from dino_model.versioning.reference import reference_of
    from dino_model.versioning.repo import init_repo
    from dino_model.versioning.sync import snapshot

    shutil.copytree(digits_root, tmp_path / "version" / "data")
    init_repo(tmp_path / "version")
    version = snapshot(tmp_path / "version")
    monkeypatch.setenv(LOCAL_CACHE_ENV, str(tmp_path / "data-cache"))
    return reference_of(version.md5, remote_url=str(tmp_path / "version" / ".dvc-remote"),
                        nfiles=version.nfiles).to_json()


def test_launcher_step_in_its_container_hands_evaluation_a_trained_model(
        image: str, docker_env: dict[str, str], digits_root: Path, tmp_path: Path, monkeypatch,
        dvc_site_cache) -> None:
    from kfp import dsl, local
    from kubeflow.trainer import ContainerBackendConfig, TrainerClient, TrainingRuntimeSource

    from components.evaluate import eval_knn
    from components.train import pretrain_on_cluster
    from pipelines.containers import docker_runner

    monkeypatch.setenv("DOCKER_HOST", docker_env["DOCKER_HOST"])
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    workdirs = home / ".kubeflow" / "trainer" / "containers"  # the SDK's job folders: the "runs claim" here
    workdirs.mkdir(parents=True)
    runtime = trainjob.runtime_parts(cluster.render_runtime())
    runtime_file = tmp_path / "runtime.yaml"
    runtime_file.write_text(yaml.safe_dump(runtime))
    client = TrainerClient(backend_config=ContainerBackendConfig(
        container_runtime="docker", container_host=docker_env["DOCKER_HOST"], pull_policy="Never",
        runtime_source=TrainingRuntimeSource(sources=[str(runtime_file)])))
    data = digits_subset(digits_root, tmp_path / "data")
    run_id = f"launch-{uuid.uuid4().hex[:8]}"
    name = cluster.job_name(run_id)
    root, kube = tmp_path / "pipeline-root", tmp_path / "kube"
    kube.mkdir()

    with kube_api.serving(kube_api.granted(RBAC)) as api:
        api.on_create = _operator(api, client, runtime, home, data)
        (kube / "config").write_text(api.kubeconfig(NAMESPACE))
        (kube / "config").chmod(0o644)
        local.init(runner=docker_runner(read_only=[kube], writable=[workdirs], owned=[root],
                                        environment={"KUBECONFIG": str(kube / "config")}), pipeline_root=str(root))
        start = time.monotonic()
        try:
            task = pretrain_on_cluster(
                run_id=run_id, operator="trainer-v2", overlay="dev", nodes=2, nproc_per_node=0, gpus=False,
                overrides=["train.epochs=1", "train.batch_size=8", "train.precision=fp32"], data_md5="0a1b2c3d.dir",
                data_rev="v7", data_root="/data/digits/train", image=image,
                runs_mount=str(workdirs / name / "runs"), timeout_hours=TIMEOUT_S / 3600)
        finally:
            seconds = time.monotonic() - start
            if (KEY + (name,)) in api.objects:
                client.delete_job(name)
        created = api.objects[KEY + (name,)]
        requests = list(api.requests)

    logger.info("launcher step: TrainJob %s created, trained on 2 nodes and copied back in %.0f s", name, seconds)
    assert requests[0] == ("POST", f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{NAMESPACE}/trainjobs", 201)
    assert {(m, code) for m, _, code in requests[1:]} == {("GET", 200)}, "no ConfigMap, nothing refused"
    trainer = created["spec"]["trainer"]
    assert (trainer["image"], trainer["numNodes"], trainer["numProcPerNode"]) == (image, 2, 1)
    assert "nvidia.com/gpu" not in trainer["resourcesPerNode"]["limits"]
    cfg = load_config_text(next(e["value"] for e in trainer["env"] if e["name"] == "DINO_CONFIG_YAML"))
    assert (cfg.data.version, cfg.data.revision, cfg.train.epochs) == ("0a1b2c3d.dir", "v7", 1)

    model = task.outputs["model"]
    assert sorted(p.name for p in Path(model.path).iterdir()) == ["checkpoint.pth", "config.yaml", "metrics.jsonl"]
    assert model.metadata["kind"] == "TrainJob" and model.metadata["nodes"] == 2
    assert model.metadata["data_version"] == "0a1b2c3d.dir" and model.metadata["job"] == name
    assert "loss" in task.outputs["metrics"].metadata

    # the pipeline's evaluation step body, unchanged, reads the model the launcher step made
    out = tmp_path / "eval"
    artifacts = {key: cls(name=key, uri=str(out / key)) for key, cls in (
        ("metrics", dsl.Metrics), ("confusion", dsl.ClassificationMetrics), ("report", dsl.Markdown),
        ("report_json", dsl.Artifact))}
    out.mkdir()
    top1 = eval_knn.python_func(
        model=dsl.Model(name="model", uri=model.path), data_ref=_digits_version(digits_root, tmp_path, monkeypatch),
        train_subdir="train", val_subdir="val", config="", config_yaml="", overrides=[], **artifacts)
    logger.info("k-NN top-1 of the TrainJob's model on the digits: %.1f%%", top1)
    assert 10.0 < top1 <= 100.0 and artifacts["metrics"].metadata["knn_top1"] == top1
