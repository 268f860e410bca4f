"""Kubeflow Trainer v2: the TrainJob `dino-mlops pretrain --cluster --operator trainer-v2` and the pipeline's
launcher step build, the TrainingRuntime it refers to (k8s/jobs/trainjob), how the launch follows it, and how
the run's checkpoint comes back as a model folder.

The job and runtime are rendered from the repository (`kubectl kustomize`) and parsed with the Trainer's own
API models (`kubeflow_trainer_api`, the models of Trainer v2.3 that the `kubeflow` SDK ships), so a field the
Trainer does not know fails here. The node pod Trainer v2 makes (runtime pod + the TrainJob's trainer fields)
is checked against the project's restricted policy (tests/k8s/k8s_policy.py). The API is the in-process fake
of tests/dino_model/train/test_cluster.py.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from dino_model.config import load_config_text
from dino_model.train import cluster
from dino_model.train.cluster import trainjob
from dino_model.train.cluster.job import ClusterJobError, JobOptions

REPO_ROOT = Path(__file__).resolve().parents[3]
IMAGE = "registry.example.com/dino-mlops:run-7"
sys.path.insert(0, str(Path(__file__).parent))
from test_cluster import CREATED, FakeCore, FakeCustom  # noqa: E402

COMPLETE = {"type": "Complete", "reason": "JobsCompleted", "message": "jobs are completed"}
TJ_FAILED = {"type": "Failed", "reason": "JobsFailed", "message": "trainjob failed: node-0 BackoffLimitExceeded\n"}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {env: cluster.render_overlay(env) for env in ("dev", "prod-gpu")}


@pytest.fixture(scope="module")
def runtime() -> dict[str, Any]:
    return trainjob.runtime_parts(cluster.render_runtime())


def _build(rendered, runtime, overlay: str, **options) -> tuple[dict[str, Any], str]:
    template, text = cluster.template_parts(rendered[overlay])
    name = cluster.job_name("3f2c9a1e-77b0")
    cfg = cluster.cluster_config(load_config_text(text), name, gpus=overlay == "prod-gpu")
    return trainjob.build_trainjob(template, runtime, JobOptions(name=name, **options), cluster.config_yaml(cfg)), text


def _node_pod(runtime: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    """The pod Trainer v2 runs per node: the runtime's `node` pod with the TrainJob's trainer fields."""
    pod = copy.deepcopy(trainjob.node_pod(runtime))
    (container,) = pod["containers"]
    trainer = job["spec"]["trainer"]
    container.update(image=trainer["image"], resources=trainer["resourcesPerNode"])
    container["env"] = [*container.get("env", []), *trainer["env"]]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "node-0"}, "spec": pod}


@pytest.mark.parametrize(("env", "nodes", "nproc"), [("dev", 2, 1), ("prod-gpu", 4, 8)])
def test_trainjob_from_the_overlay_on_the_repository_runtime(rendered, runtime, env, nodes, nproc) -> None:
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainingRuntime, TrainerV1alpha1TrainJob

    job, _ = _build(rendered, runtime, env, nodes=nodes, nproc_per_node=nproc, image=IMAGE,
                    env=(("DINO_RUN_ID", "r1"),))
    assert (job["apiVersion"], job["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
    assert job["spec"]["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "TrainingRuntime",
                                         "name": "dino-pretrain"}
    trainer = job["spec"]["trainer"]
    assert (trainer["image"], trainer["numNodes"], trainer["numProcPerNode"]) == (IMAGE, nodes, nproc)
    limits = trainer["resourcesPerNode"]["limits"]
    assert limits.get("nvidia.com/gpu") == ("8" if env == "prod-gpu" else None)
    env_vars = {e["name"]: e["value"] for e in trainer["env"]}
    assert env_vars["DINO_RUN_ID"] == "r1" and env_vars["HOME"] == "/tmp"
    cfg = load_config_text(env_vars["DINO_CONFIG_YAML"])
    assert cfg.train.output_dir == f"/runs/{job['metadata']['name']}"
    assert job["metadata"]["namespace"] == rendered[env][0]["metadata"]["namespace"]
    # the Trainer's own API models read both back unchanged
    assert TrainerV1alpha1TrainJob.from_dict(job).to_dict()["spec"]["trainer"]["numNodes"] == nodes
    assert TrainerV1alpha1TrainingRuntime.from_dict(runtime).to_dict()["metadata"]["name"] == "dino-pretrain"


def test_both_operators_train_the_same_config_and_image(rendered, runtime) -> None:
    template, text = cluster.template_parts(rendered["prod-gpu"])
    options = JobOptions(name="dino-pretrain-same", nodes=3, nproc_per_node=4)
    pytorch = cluster.build_job(template, options)
    train = trainjob.build_trainjob(template, runtime, options, text)
    master = pytorch["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert train["spec"]["trainer"]["image"] == master["image"]
    assert train["spec"]["trainer"]["resourcesPerNode"] == master["resources"]
    assert {e["name"]: e["value"] for e in train["spec"]["trainer"]["env"]}["DINO_CONFIG_YAML"] == text


def test_the_node_pod_is_restricted_and_mounts_only_the_claims(rendered, runtime, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(REPO_ROOT / "tests" / "k8s"))
    import k8s_policy

    job, _ = _build(rendered, runtime, "prod-gpu", nodes=2, image=IMAGE)
    pod = _node_pod(runtime, job)
    assert [str(v) for v in k8s_policy.check([pod])] == []
    assert "initContainers" not in pod["spec"]
    kinds = {v["name"]: next(k for k in v if k != "name") for v in pod["spec"]["volumes"]}
    assert kinds == {"data": "persistentVolumeClaim", "runs": "persistentVolumeClaim", "dshm": "emptyDir",
                     "tmp": "emptyDir"}
    (container,) = pod["spec"]["containers"]
    assert container["name"] == "node" and container["command"] == ["torchrun"]
    assert container["args"] == ["--module", "dino_model.train.worker", "--config-env", "DINO_CONFIG_YAML", "--resume"]


def test_claims_belong_to_the_runtime(rendered, runtime) -> None:
    template, _ = cluster.template_parts(rendered["dev"])
    with pytest.raises(ClusterJobError, match=r"--data-claim, --runs-claim: a TrainJob's claims are those of"):
        trainjob.build_trainjob(template, runtime, JobOptions(name="dino-pretrain-a", data_claim="x",
                                                              runs_claim="y"), "")
    assert trainjob.runtime_runs_claim(runtime) == "dino-runs"


def test_a_runtime_without_the_config_env_is_refused(runtime) -> None:
    broken = copy.deepcopy(runtime)
    trainjob.node_container(broken)["args"] = ["--module", "dino_model.train.worker", "--config", "/x.yaml"]
    with pytest.raises(ClusterJobError, match="--config-env DINO_CONFIG_YAML"):
        trainjob.runtime_parts([broken])
    with pytest.raises(ClusterJobError, match="found 0"):
        trainjob.runtime_parts([])


def _launch(rendered, runtime, custom, core, **kwargs) -> dict[str, Any]:
    options = JobOptions(name=cluster.job_name("r1"), nodes=2, nproc_per_node=1, image=IMAGE)
    return cluster.launch(rendered["dev"], options, operator="trainer-v2", runtime=[runtime],
                          clients=cluster.Clients(custom=custom, core=core), poll_s=0, **kwargs)


def test_trainjob_is_created_followed_to_complete_without_a_configmap(rendered, runtime) -> None:
    custom, core = FakeCustom([CREATED, COMPLETE]), FakeCore()
    result = _launch(rendered, runtime, custom, core, overrides=["train.epochs=2"])
    assert custom.calls == [("trainer.kubeflow.org", "trainjobs", "create"),
                            ("trainer.kubeflow.org", "trainjobs", "get"), ("trainer.kubeflow.org", "trainjobs", "get")]
    assert core.calls == [] and core.maps == {}
    assert (result["kind"], result["operator"], result["runtime"]) == ("TrainJob", "trainer-v2", "dino-pretrain")
    assert (result["checkpoint"], result["runs_claim"], result["nodes"]) == (
        "/runs/dino-pretrain-r1/checkpoint.pth", "dino-runs", 2)
    env = {e["name"]: e["value"] for e in custom.jobs["dino-pretrain-r1"]["spec"]["trainer"]["env"]}
    assert load_config_text(env["DINO_CONFIG_YAML"]).train.epochs == 2


def test_a_failed_trainjob_is_one_line(rendered, runtime) -> None:
    with pytest.raises(ClusterJobError) as err:
        _launch(rendered, runtime, FakeCustom([CREATED, TJ_FAILED]), FakeCore())
    assert str(err.value) == ("TrainJob dino-mlops-dev/dino-pretrain-r1 failed: trainjob failed: node-0 "
                              "BackoffLimitExceeded")
    with pytest.raises(ClusterJobError, match="did not finish within 0 s; last state Created"):
        cluster.wait_for_job(FakeCustom([CREATED] * 3, existing={"metadata": {"name": "j"}}), "ns", "j",
                             timeout_s=0, kind=cluster.TRAINJOB)


def test_an_unknown_operator_is_refused(rendered) -> None:
    with pytest.raises(ClusterJobError, match="operator 'kubeflow' is not one of trainer-v2, training-operator-v1"):
        cluster.launch(rendered["dev"], JobOptions(name="dino-pretrain-a"), operator="kubeflow")


def test_fetch_run_copies_the_run_folder_into_the_model(tmp_path) -> None:
    run = tmp_path / "runs" / "dino-pretrain-r1"
    run.mkdir(parents=True)
    for name, text in (("checkpoint.pth", "weights"), ("config.yaml", "train: {}"), ("metrics.jsonl", "{}\n")):
        (run / name).write_text(text)
    checkpoint = cluster.fetch_run(run, tmp_path / "model")
    assert checkpoint.read_text() == "weights"
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["checkpoint.pth", "config.yaml", "metrics.jsonl"]
    with pytest.raises(ClusterJobError, match="holds no checkpoint.pth"):
        cluster.fetch_run(tmp_path / "runs" / "other", tmp_path / "model2")


def test_the_worker_reads_its_config_from_the_environment(monkeypatch, tiny_cfg) -> None:
    from dino_model.train.worker import worker_config

    monkeypatch.setenv("DINO_CONFIG_YAML", cluster.config_yaml(tiny_cfg))
    assert worker_config(None, "DINO_CONFIG_YAML") == tiny_cfg
    monkeypatch.setenv("DINO_CONFIG_YAML", " ")
    with pytest.raises(Exception, match="--config-env DINO_CONFIG_YAML: the environment variable is unset or empty"):
        worker_config(None, "DINO_CONFIG_YAML")


def test_component_compiles_with_the_operator_choice(tmp_path) -> None:
    import kfp

    from components.train import pretrain_on_cluster

    path = tmp_path / "pretrain_on_cluster.yaml"
    kfp.compiler.Compiler().compile(pretrain_on_cluster, str(path))
    (component,) = yaml.safe_load(path.read_text())["components"].values()
    inputs = component["inputDefinitions"]["parameters"]
    assert inputs["operator"]["defaultValue"] == "trainer-v2" and "runtime_yaml" in inputs
    assert set(component["outputDefinitions"]["artifacts"]) == {"model", "metrics"}


def test_cli_launches_a_trainjob_and_prints_the_checkpoint(rendered, monkeypatch, capsys, tmp_path) -> None:
    import json

    from dino_model.cli.main import main

    custom, core = FakeCustom([CREATED, COMPLETE]), FakeCore()
    monkeypatch.setattr(cluster.launcher, "connect", lambda: cluster.Clients(custom=custom, core=core))
    template = tmp_path / "job.yaml"
    template.write_text(yaml.safe_dump_all(rendered["prod-gpu"]))
    code = main(["pretrain", "--cluster", "--operator", "trainer-v2", "--template", str(template), "--run-id", "kfp-78",
                 "--nodes", "3", "--nproc-per-node", "4", "--image", IMAGE, "--poll", "0.001", "train.epochs=20"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["kind"], result["checkpoint"]) == ("TrainJob", "/runs/dino-pretrain-kfp-78/checkpoint.pth")
    trainer = custom.jobs["dino-pretrain-kfp-78"]["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"], trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"]) \
        == (3, 4, "4")
    cfg = load_config_text(next(e["value"] for e in trainer["env"] if e["name"] == "DINO_CONFIG_YAML"))
    assert (cfg.train.device, cfg.train.epochs) == ("cuda", 20) and core.maps == {}
    with pytest.raises(SystemExit) as refused:
        main(["pretrain", "--cluster", "--operator", "kubeflow"])
    assert refused.value.code == 2 and "invalid choice: 'kubeflow'" in capsys.readouterr().err


def test_the_built_trainjob_passes_the_training_pods_admission_policy(rendered, runtime, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(REPO_ROOT / "tests" / "k8s"))
    from k8s_cel import denials
    from k8s_render import K8S_DIR, one, render

    policy = one(render(K8S_DIR / "cluster"), "ValidatingAdmissionPolicy", "dino-mlops-training-pods")
    for overlay in ("dev", "prod-gpu"):
        job, _ = _build(rendered, runtime, overlay, nodes=2, image=IMAGE, env=(("DINO_RUN_ID", "r1"),))
        assert denials(policy, job) == [], overlay
    with_secret = copy.deepcopy(job)
    secret = {"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}
    with_secret["spec"]["trainer"]["env"].append(secret)
    assert denials(policy, with_secret), "the policy reads the trainer env this TrainJob carries"
