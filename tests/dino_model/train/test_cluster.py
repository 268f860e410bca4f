"""`dino-mlops pretrain --cluster` and the pipeline's `pretrain_on_cluster`: the PyTorchJob they build and how
they follow it (the TrainJob of Kubeflow Trainer v2: test_trainjob.py).

The jobs are built from the real dev and prod-gpu overlays as `kubectl kustomize` renders them, and checked on
the fields Kubeflow Training Operator v1.9 reads (name, nprocPerNode, Master/Worker replicas, the `pytorch`
container's image and resources, the config volume) plus the reduced PyTorchJob CRD schema of tests/k8s.

No Kubernetes API server and no Training Operator exist here, so creating, adopting and following a job runs
against a small in-process fake of CustomObjectsApi and CoreV1Api that answers as the API server does (409 on a
name that exists, status conditions appended by the operator). What the fake cannot show: scheduling, the pods
waiting for the ConfigMap mount, and the garbage collector deleting the ConfigMap with its owner.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from dino_model.cli.main import main
from dino_model.config import load_config_text
from dino_model.train import cluster
from dino_model.train.cluster import ClusterJobError, JobOptions

REPO_ROOT = Path(__file__).resolve().parents[3]
RBAC = REPO_ROOT / "k8s" / "base" / "training" / "launcher-rbac.yaml"
IMAGE = "registry.example.com/dino-mlops:run-7"


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {env: cluster.render_overlay(env) for env in ("dev", "prod-gpu")}


def _schema_errors(resource: dict[str, Any]) -> list[str]:
    spec = importlib.util.spec_from_file_location("k8s_schema", REPO_ROOT / "tests" / "k8s" / "k8s_schema.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.schema_errors(resource, version=module.k8s_versions()[-1])


def _pods(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {role: r["template"]["spec"] for role, r in job["spec"]["pytorchReplicaSpecs"].items()}


# ------------------------------------------------------------------------------------------ the job


@pytest.mark.parametrize(("env", "nodes", "nproc"), [("dev", 3, 2), ("prod-gpu", 4, 8), ("prod-gpu", 1, 4)])
def test_job_from_the_rendered_overlay(rendered, env: str, nodes: int, nproc: int) -> None:
    template, _ = cluster.template_parts(rendered[env])
    name = cluster.job_name("3f2c9a1e-77b0-4d5e-9a61-0c2b8e4f1d22")
    options = JobOptions(name=name, nodes=nodes, nproc_per_node=nproc, image=IMAGE, data_claim="imagenet",
                         data_subpath="v3/", env=(("DINO_RUN_ID", "r1"),))
    job = cluster.build_job(template, options)

    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "PyTorchJob"
    assert job["metadata"]["name"] == name and len(name) <= 63
    assert job["metadata"]["namespace"] == template["metadata"]["namespace"]
    assert job["metadata"]["labels"]["app.kubernetes.io/instance"] == name
    assert job["spec"]["nprocPerNode"] == str(nproc)  # the operator reads a string
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1
    if nodes == 1:
        assert set(replicas) == {"Master"}
    else:
        assert replicas["Worker"]["replicas"] == nodes - 1
    gpus = env == "prod-gpu"  # as the template does
    for role, pod in _pods(job).items():
        (container,) = pod["containers"]
        assert container["name"] == "pytorch" and container["image"] == IMAGE, role
        limits, requests = container["resources"]["limits"], container["resources"]["requests"]
        if gpus:
            assert limits["nvidia.com/gpu"] == requests["nvidia.com/gpu"] == str(nproc)
            assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        else:
            assert "nvidia.com/gpu" not in limits and "nodeSelector" not in pod
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        config_mount = mounts["/etc/dino-mlops/pretrain"]
        assert volumes[config_mount["name"]]["configMap"]["name"] == name
        assert volumes[mounts["/data"]["name"]]["persistentVolumeClaim"]["claimName"] == "imagenet"
        assert mounts["/data"]["subPath"] == "v3" and mounts["/data"]["readOnly"] is True
        assert volumes[mounts["/runs"]["name"]]["persistentVolumeClaim"]["claimName"] == "dino-runs"
        assert {"name": "DINO_RUN_ID", "value": "r1"} in container["env"]
        assert container["args"][-1] == "--resume" and container["command"] == ["torchrun"]
    assert _schema_errors(job) == []
    assert template["metadata"]["name"] == "dino-pretrain", "the template itself is left as rendered"


def test_gpus_follow_the_option_not_only_the_template(rendered) -> None:
    dev, _ = cluster.template_parts(rendered["dev"])
    prod, _ = cluster.template_parts(rendered["prod-gpu"])
    on_gpus = cluster.build_job(dev, JobOptions(name="dino-pretrain-a", nproc_per_node=2, gpus=True))
    for pod in _pods(on_gpus).values():
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    on_cpus = cluster.build_job(prod, JobOptions(name="dino-pretrain-b", gpus=False))
    for pod in _pods(on_cpus).values():
        assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["limits"]
        assert "tolerations" not in pod and "nodeSelector" not in pod
    assert on_cpus["spec"]["nprocPerNode"] == "8" and on_cpus["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
    assert _schema_errors(on_gpus) == [] and _schema_errors(on_cpus) == []


def test_job_names_are_dns_labels_stable_per_run_id() -> None:
    assert cluster.job_name("Run_42") == "dino-pretrain-run-42"
    long = cluster.job_name("x" * 200)
    assert len(long) <= cluster.MAX_NAME_LEN and long == cluster.job_name("x" * 200) != cluster.job_name("x" * 201)
    assert cluster.new_run_id() != cluster.new_run_id()
    with pytest.raises(ClusterJobError, match="no letters"):
        cluster.job_name("__")
    for bad in (JobOptions(name="Dino"), JobOptions(name="d" * 60), JobOptions(name="dino-x", nodes=0),
                JobOptions(name="dino-x", nproc_per_node=0)):
        with pytest.raises(ClusterJobError):
            cluster.validate_options(bad)


def test_run_config_writes_the_run_folder_and_reads_under_data(rendered) -> None:
    _, text = cluster.template_parts(rendered["dev"])
    cfg = cluster.cluster_config(load_config_text(text), "dino-pretrain-a", gpus=False,
                                 data_root="/data/digits/v2/train")
    assert cfg.train.output_dir == "/runs/dino-pretrain-a" and cfg.train.device == "cpu"
    assert cfg.data.root == "/data/digits/v2/train" and cfg.model.arch == "vit_tiny"
    assert load_config_text(cluster.config_yaml(cfg)) == cfg
    with pytest.raises(ClusterJobError, match="under /data"):
        cluster.cluster_config(cfg, "dino-pretrain-a", gpus=True, data_root="/mnt/elsewhere")


# ------------------------------------------------------------------------------- the API, faked


def _conflict(status: int = 409, reason: str = "Conflict", message: str = "already exists") -> ApiException:
    exc = ApiException(status=status, reason=reason)
    exc.body = json.dumps({"kind": "Status", "message": message})
    return exc


class FakeCustom:
    """CustomObjectsApi for PyTorchJobs: create (409 when the name exists) and get, whose status the fake
    operator advances through `conditions` one poll at a time."""

    def __init__(self, conditions: list[dict[str, str]], existing: dict[str, Any] | None = None,
                 errors: dict[int, ApiException] | None = None) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.conditions, self.errors, self.calls, self.gets = conditions, errors or {}, [], 0
        if existing is not None:
            self.jobs[existing["metadata"]["name"]] = existing

    def create_namespaced_custom_object(self, group, version, namespace, plural, body, *, _request_timeout):
        assert _request_timeout
        self.calls.append((group, plural, "create"))
        if self.errors.get(0):
            raise self.errors[0]
        if body["metadata"]["name"] in self.jobs:
            raise _conflict()
        job = copy.deepcopy(body)
        job["metadata"]["uid"] = "uid-new"
        self.jobs[job["metadata"]["name"]] = job
        return job

    def get_namespaced_custom_object(self, group, version, namespace, plural, name, *, _request_timeout):
        assert _request_timeout
        self.calls.append((group, plural, "get"))
        self.gets += 1
        if self.gets in self.errors:
            raise self.errors[self.gets]
        job = copy.deepcopy(self.jobs[name])
        job["status"] = {"conditions": [dict(c, status="True") for c in self.conditions[:self.gets]],
                         "replicaStatuses": {"Master": {"active": 1}}}
        return job


class FakeCore:
    def __init__(self, existing: bool = False) -> None:
        self.maps: dict[str, dict[str, Any]] = {}
        self.existing, self.calls = existing, []

    def create_namespaced_config_map(self, namespace, body, *, _request_timeout):
        assert _request_timeout
        self.calls.append(("", "configmaps", "create"))
        if self.existing:
            raise _conflict()
        self.maps[body["metadata"]["name"]] = body
        return body


CREATED = {"type": "Created", "reason": "PyTorchJobCreated", "message": "created"}
RUNNING = {"type": "Running", "reason": "PyTorchJobRunning", "message": "running"}
SUCCEEDED = {"type": "Succeeded", "reason": "PyTorchJobSucceeded", "message": "succeeded"}
FAILED = {"type": "Failed", "reason": "PyTorchJobFailed",
          "message": "PyTorchJob dino-mlops-dev/dino-pretrain-r1 is failed because 1 Worker replica(s) failed.\n"}


def _launch(rendered, custom, core, **kwargs) -> dict[str, Any]:
    options = JobOptions(name=cluster.job_name("r1"), nodes=2, nproc_per_node=1, image=IMAGE)
    return cluster.launch(rendered["dev"], options, clients=cluster.Clients(custom=custom, core=core),
                          poll_s=0, **kwargs)


def test_succeeded_job_hands_back_the_checkpoint_on_the_runs_claim(rendered, caplog) -> None:
    custom, core = FakeCustom([CREATED, RUNNING, RUNNING, SUCCEEDED]), FakeCore()
    with caplog.at_level("INFO", logger="dino_model.train.cluster"):
        result = _launch(rendered, custom, core, overrides=["train.epochs=2"])
    assert result["checkpoint"] == "/runs/dino-pretrain-r1/checkpoint.pth"
    assert (result["runs_claim"], result["claim_path"]) == ("dino-runs", "dino-pretrain-r1/checkpoint.pth")
    assert (result["namespace"], result["nodes"], result["uid"]) == ("dino-mlops-dev", 2, "uid-new")
    assert custom.gets == 4
    (config_map,) = core.maps.values()
    assert config_map["metadata"]["name"] == "dino-pretrain-r1"
    assert config_map["metadata"]["ownerReferences"] == [{"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
                                                          "name": "dino-pretrain-r1", "uid": "uid-new",
                                                          "controller": True}]
    cfg = load_config_text(config_map["data"]["config.yaml"])
    assert cfg.train.output_dir == "/runs/dino-pretrain-r1" and cfg.train.epochs == 2 and cfg.train.device == "cpu"
    assert _schema_errors(config_map) == []
    messages = [r.getMessage() for r in caplog.records]
    assert any("Running" in m for m in messages) and any("succeeded" in m for m in messages)
    assert sum("Running" in m for m in messages) == 1, "progress is logged when the state changes"


def test_failed_job_is_one_line_naming_the_job_and_message(rendered) -> None:
    with pytest.raises(ClusterJobError) as err:
        _launch(rendered, FakeCustom([CREATED, RUNNING, FAILED]), FakeCore())
    text = str(err.value)
    assert "\n" not in text and "dino-mlops-dev/dino-pretrain-r1 failed" in text
    assert "1 Worker replica(s) failed." in text


def test_timeout_is_an_error_and_keeps_the_job() -> None:
    custom = FakeCustom([CREATED, RUNNING] + [RUNNING] * 100)
    custom.jobs["j"] = {"metadata": {"name": "j"}}
    now = [0.0]
    with pytest.raises(ClusterJobError, match=r"j did not finish within 120 s; last state Running"):
        cluster.wait_for_job(custom, "ns", "j", timeout_s=120, poll_s=30, clock=lambda: now[0],
                             sleep=lambda s: now.__setitem__(0, now[0] + s))
    assert custom.gets == 5 and "j" in custom.jobs


def test_existing_job_is_adopted(rendered) -> None:
    existing = {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
                "metadata": {"name": "dino-pretrain-r1", "namespace": "dino-mlops-dev", "uid": "uid-old"}}
    custom, core = FakeCustom([RUNNING, SUCCEEDED], existing=existing), FakeCore(existing=True)
    result = _launch(rendered, custom, core)
    assert result["uid"] == "uid-old" and result["checkpoint"] == "/runs/dino-pretrain-r1/checkpoint.pth"
    assert custom.calls[:2] == [("kubeflow.org", "pytorchjobs", "create"), ("kubeflow.org", "pytorchjobs", "get")]


def test_transient_api_errors_are_retried_and_others_are_not(rendered) -> None:
    custom = FakeCustom([CREATED, CREATED, SUCCEEDED], errors={1: _conflict(503, "Service Unavailable", "busy")})
    assert _launch(rendered, custom, FakeCore())["job"] == "dino-pretrain-r1"
    forbidden = _conflict(403, "Forbidden", 'pytorchjobs.kubeflow.org is forbidden: User "x" cannot create')
    with pytest.raises(ClusterJobError, match=r"403 Forbidden: .* cannot create .*launcher-rbac.yaml"):
        _launch(rendered, FakeCustom([], errors={0: forbidden}), FakeCore())


def test_the_launcher_role_grants_exactly_what_the_code_calls(rendered) -> None:
    custom, core = FakeCustom([CREATED, SUCCEEDED], existing=None), FakeCore()
    _launch(rendered, custom, core)
    adopted = FakeCustom([SUCCEEDED], existing={"metadata": {"name": "dino-pretrain-r1", "uid": "u"},
                                                "apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob"})
    _launch(rendered, adopted, FakeCore(existing=True))
    trainjobs = FakeCustom([CREATED, {"type": "Complete", "reason": "JobsCompleted", "message": "done"}])
    cluster.launch(rendered["dev"], JobOptions(name="dino-pretrain-r2"), operator="trainer-v2",
                   clients=cluster.Clients(custom=trainjobs, core=FakeCore()), poll_s=0)
    called = set(custom.calls + core.calls + adopted.calls + trainjobs.calls)
    role = next(d for d in yaml.safe_load_all(RBAC.read_text()) if d["kind"] == "Role")
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}
    assert called == granted


def test_clients_come_from_the_pod_in_a_cluster_else_from_kubeconfig(monkeypatch) -> None:
    from kubernetes import config

    used = []
    monkeypatch.setattr(config, "load_incluster_config", lambda: used.append("in-cluster"))
    monkeypatch.setattr(config, "load_kube_config", lambda: used.append("kubeconfig"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    cluster.connect()
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    clients = cluster.connect()
    assert used == ["in-cluster", "kubeconfig"]
    assert type(clients.custom).__name__ == "CustomObjectsApi" and type(clients.core).__name__ == "CoreV1Api"


# -------------------------------------------------------------------------------- CLI and component


def test_cli_help_shows_the_cluster_options(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main(["pretrain", "--cluster", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--cluster", "--nodes", "--nproc-per-node", "--gpus", "--overlay", "--template", "--run-id",
                 "--image", "--data-root", "--data-claim", "--data-subpath", "--timeout"):
        assert flag in out, flag


@pytest.mark.parametrize("argv", [["--nodes", "0"], ["--nproc-per-node", "-1"], ["--run-id=__"],
                                  ["--output-dir", "runs/x"], ["--timeout", "0"]])
def test_cli_bad_values_fail_with_one_line(capsys, argv) -> None:
    assert main(["pretrain", "--cluster", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dino-mlops: error: ") and "\n" not in err, err


def test_cli_launches_waits_and_prints_the_checkpoint(rendered, monkeypatch, capsys, tmp_path) -> None:
    custom, core = FakeCustom([CREATED, SUCCEEDED]), FakeCore()
    monkeypatch.setattr(cluster.launcher, "connect", lambda: cluster.Clients(custom=custom, core=core))
    template = tmp_path / "job.yaml"
    template.write_text(yaml.safe_dump_all(rendered["prod-gpu"]))
    code = main(["pretrain", "--cluster", "--template", str(template), "--run-id", "kfp-77", "--nodes", "3",
                 "--nproc-per-node", "4", "--image", IMAGE, "--poll", "0.001", "train.epochs=20"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["checkpoint"] == "/runs/dino-pretrain-kfp-77/checkpoint.pth"
    job = custom.jobs["dino-pretrain-kfp-77"]
    assert job["metadata"]["namespace"] == "dino-mlops"
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 2 and job["spec"]["nprocPerNode"] == "4"
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["resources"][
        "limits"]["nvidia.com/gpu"] == "4"
    cfg = load_config_text(core.maps["dino-pretrain-kfp-77"]["data"]["config.yaml"])
    assert (cfg.train.device, cfg.train.epochs, cfg.data.root) == ("cuda", 20, "/data/train")


def test_component_compiles(tmp_path) -> None:
    import kfp

    from components.train import pretrain_on_cluster

    path = tmp_path / "pretrain_on_cluster.yaml"
    kfp.compiler.Compiler().compile(pretrain_on_cluster, str(path))
    spec = yaml.safe_load(path.read_text())
    (component,) = spec["components"].values()
    inputs = component["inputDefinitions"]["parameters"]
    assert {"run_id", "nodes", "nproc_per_node", "gpus", "overlay", "data_root", "image"} <= set(inputs)
    assert component["outputDefinitions"]["artifacts"]["model"]["artifactType"]["schemaTitle"] == "system.Model"
