"""The PyTorchJob template: the operator's conventions, GPUs, the trainer's config, the launcher's
rights, and a two-node run started exactly as the Training Operator starts the pods."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest
import yaml
from k8s_render import INSTALLS, find, one

from dino_model.runtime.processes import free_ports

ENVS = sorted(INSTALLS)


def _job(rendered, env):
    return one(rendered[f"{env}/pretrain"], "PyTorchJob", "dino-pretrain")


def _config_text(rendered, env) -> str:
    return one(rendered[f"{env}/pretrain"], "ConfigMap", "pretrain-config")["data"]["config.yaml"]


@pytest.mark.parametrize("env", ENVS)
def test_operator_conventions(rendered, env: str) -> None:
    spec = _job(rendered, env)["spec"]
    replicas = spec["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] >= 1
    for role, replica in replicas.items():
        pod = replica["template"]["spec"]
        (container,) = pod["containers"]
        assert container["name"] == "pytorch", role
        assert container["command"] == ["torchrun"], "torchrun turns PET_* into RANK/LOCAL_RANK per process"
        assert container["args"][:2] == ["--module", "dino_model.train.worker"] and "--resume" in container["args"]
        assert replica["restartPolicy"] == "OnFailure"
        shm = next(v for v in pod["volumes"] if any(m["name"] == v["name"] and m["mountPath"] == "/dev/shm"
                                                    for m in container["volumeMounts"]))
        assert shm["emptyDir"]["medium"] == "Memory"
        # the --config file is the pretrain-config ConfigMap's key, mounted where the args say
        config = PurePosixPath(container["args"][container["args"].index("--config") + 1])
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(config.parent))
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        assert volume["configMap"]["name"] == "pretrain-config"
        assert config.name in one(rendered[f"{env}/pretrain"], "ConfigMap", "pretrain-config")["data"]


@pytest.mark.parametrize("env", ENVS)
def test_gpus_match_processes_per_node(rendered, env: str) -> None:
    spec = _job(rendered, env)["spec"]
    for replica in spec["pytorchReplicaSpecs"].values():
        pod = replica["template"]["spec"]
        limits = pod["containers"][0]["resources"]["limits"]
        if env == "prod-gpu":
            assert int(limits["nvidia.com/gpu"]) == int(spec["nprocPerNode"]) == 8
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        else:
            assert "nvidia.com/gpu" not in limits and spec["nprocPerNode"] == "1"


@pytest.mark.parametrize("env", ENVS)
def test_trainer_config_is_a_valid_train_config(rendered, env: str) -> None:
    from dino_model.config import load_config_text

    cfg = load_config_text(_config_text(rendered, env))
    container = _job(rendered, env)["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    mounts = {m["mountPath"]: m.get("readOnly", False) for m in container["volumeMounts"]}
    assert mounts.get("/data") is True and PurePosixPath(cfg.data.root).is_relative_to("/data")
    assert mounts.get("/runs") is False and PurePosixPath(cfg.train.output_dir).is_relative_to("/runs")
    assert cfg.train.device == ("cuda" if env == "prod-gpu" else "cpu")


@pytest.mark.parametrize("env", ENVS)
def test_launcher_rights_are_minimal(rendered, env: str) -> None:
    role = one(rendered[env], "Role", "pytorchjob-launcher")
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}
    assert ("kubeflow.org", "pytorchjobs", "create") in granted
    assert not any("*" in item for item in granted)
    assert not any(r in {"secrets", "pods/exec", "roles", "rolebindings"} for _, r, _ in granted)
    assert {v for _, _, v in granted} <= {"create", "get", "list", "watch", "delete"}
    (binding,) = find(rendered[env], "RoleBinding")
    assert binding["roleRef"]["name"] == "pytorchjob-launcher"
    assert [s["kind"] for s in binding["subjects"]] == ["ServiceAccount"]
    assert find(rendered[env], "ClusterRole") == [] and find(rendered[env], "ClusterRoleBinding") == []




@pytest.mark.slow
def test_two_nodes_started_like_the_training_operator(rendered, digits_root, tmp_path) -> None:
    """Each "pod" runs the container's command with the env the operator injects (no LOCAL_RANK)."""
    job = _job(rendered, "dev")
    cluster_config = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["args"]
    cluster_config = cluster_config[cluster_config.index("--config") + 1]
    data = tmp_path / "data"
    for class_dir in sorted((digits_root / "train").iterdir())[:4]:
        (data / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.iterdir())[:4]:
            shutil.copy(image, data / class_dir.name)
    cfg = yaml.safe_load(_config_text(rendered, "dev"))
    cfg["data"]["root"] = str(data)
    cfg["train"].update(output_dir=str(tmp_path / "run"), epochs=1, batch_size=4)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))

    workers = job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"]
    roles = [("Master", 0)] + [("Worker", i + 1) for i in range(workers)]
    nnodes, nproc, port = len(roles), int(job["spec"]["nprocPerNode"]), free_ports(1)[0]
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    procs = []
    for role, rank in roles:
        container = job["spec"]["pytorchReplicaSpecs"][role]["template"]["spec"]["containers"][0]
        env = {**os.environ, **{e["name"]: e["value"] for e in container["env"]}, "HOME": str(tmp_path)}
        env.pop("LOCAL_RANK", None)
        env.update({  # pkg/controller.v1/pytorch/envvar.go (Training Operator v1.9)
            "PET_NNODES": str(nnodes), "PET_NPROC_PER_NODE": str(nproc), "PET_NODE_RANK": str(rank),
            "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(port), "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port), "WORLD_SIZE": str(nnodes * nproc), "RANK": str(rank),
        })
        argv = [torchrun, *[str(config) if a == cluster_config else a for a in container["args"]]]
        log = (tmp_path / f"{role}-{rank}.log").open("w")
        procs.append((subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path), log))
    for proc, log in procs:
        try:
            proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
    logs = {p.name: p.read_text() for p in tmp_path.glob("*.log")}
    assert [proc.returncode for proc, _ in procs] == [0] * nnodes, logs
    assert "rank 0 of 2" in logs["Master-0.log"], logs["Master-0.log"][-2000:]
    assert (tmp_path / "run" / "checkpoint.pth").is_file()
    assert (tmp_path / "run" / "metrics.jsonl").read_text().strip()
