"""The compiled pipeline with every step in the project image, as a KFP backend runs it.

kfp.local's DockerRunner starts one container per step from the image (non-root, read-only root
filesystem). The data repository is reachable only by its git URL and its DVC remote (mounted
read-only, as a cluster mounts a volume), never the checkout. A local tritonserver serves what the
deploy step publishes, and a real Pushgateway receives the steps' metrics. A second data version
pushed to the data repository then trains and deploys version 2 with the new lineage.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.triton]

TINY = ["train.epochs=1", "model.out_dim=256", "crops.local_crops_number=2", "train.batch_size=16"]
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t.invalid", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t.invalid"}


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV}).stdout.strip()


def _subset(source: Path, dest: Path, per_class: int, offset: int = 0) -> None:
    for cls in sorted(p for p in source.iterdir() if p.is_dir()):
        (dest / cls.name).mkdir(parents=True, exist_ok=True)
        for image in sorted(cls.iterdir())[offset:offset + per_class]:
            shutil.copy(image, dest / cls.name / image.name)


@pytest.fixture(scope="module")
def data_repository(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A data repository (bare git + DVC remote) with one version of a digits subset; the working clone."""
    from dino_model.data.materialize import materialize
    from dino_model.versioning.repo import init_repo
    from dino_model.versioning.sync import snapshot

    base = tmp_path_factory.mktemp("data-host")
    digits = base / "digits-source"
    materialize("digits", digits)
    work, bare, remote = base / "work", base / "data.git", base / "dvc-remote"
    work.mkdir()
    remote.mkdir()
    _git(work, "init", "-q", "-b", "main")
    init_repo(work, remote_dir=remote)
    _git(work, "add", "-A")
    _git(work, "commit", "-qm", "dvc init")
    _subset(digits / "train", work / "data" / "train", 25)
    _subset(digits / "val", work / "data" / "val", 8)
    os.environ.update(GIT_ENV)
    snapshot(work, "first data version")
    _git(base, "clone", "-q", "--bare", str(work), str(bare))
    _git(work, "remote", "add", "origin", str(bare))
    return {"work": work, "url": f"file://{bare}", "remote": remote, "digits": digits}


def _run(tmp: Path, repo: dict, ports: dict, gateway: str):
    from pipelines.local import run_local

    return run_local(tmp, config="tiny", overrides=TINY, min_knn_top1=0.0, require_not_worse=False,
                     linear_epochs=5, output_dir=tmp / "local", pushgateway=gateway, containers=True,
                     data_repo=repo["url"], dvc_remote=str(repo["remote"]), train_subdir="train",
                     val_subdir="val", **ports)


def _gateway_groups(gateway: str) -> list[dict]:
    with urllib.request.urlopen(f"http://{gateway}/api/v1/metrics", timeout=10) as response:
        return json.load(response)["data"]


def test_pipeline_in_containers_from_a_git_url_to_triton_then_a_new_version(
        image, docker_env, data_repository, tmp_path, monkeypatch):
    from dino_model.monitoring.prometheus import find_binary, run_pushgateway
    from dino_model.runtime.processes import free_ports
    from dino_model.serving.client import EmbeddingClient
    from dino_model.versioning.sync import snapshot
    from pipelines.local_server import stop_local_server

    find_binary("prometheus-pushgateway")
    monkeypatch.setenv("DOCKER_HOST", docker_env["DOCKER_HOST"])
    grpc, http, metrics, push_port = free_ports(4)
    ports = {"grpc_port": grpc, "http_port": http, "metrics_port": metrics}
    work = data_repository["work"]
    with run_pushgateway(port=push_port, log_dir=tmp_path) as gateway_url:
        gateway = gateway_url.removeprefix("http://").rstrip("/")
        try:
            first = _run(tmp_path, data_repository, ports, gateway)
            lineage = EmbeddingClient(first["endpoint"]["grpc"], "dino").served.contract.lineage
            assert lineage["data_version"] == _git_md5(work)
            assert lineage["data_revision"] == _git(work, "rev-parse", "HEAD")
            assert [m["version"] for m in first["deployed"]] == ["1"]

            groups = _gateway_groups(gateway)
            runs = {g["labels"].get("run") for g in groups if g["labels"].get("job") in {"dino-train", "dino-eval"}}
            assert len(runs) == 1 and None not in runs and "model" not in runs, groups  # the KFP run id
            evaluations = {g["labels"].get("evaluation") for g in groups if g["labels"].get("job") == "dino-eval"}
            assert {"knn", "linear"} <= evaluations
            assert any(g["labels"].get("job") == "dino-deploy" for g in groups)
            assert any(g["labels"].get("job") == "dino-data" for g in groups)

            _subset(data_repository["digits"] / "train", work / "data" / "train", 5, offset=25)
            snapshot(work, "second data version")
            _git(work, "push", "-q", "origin", "main")
            second = _run(tmp_path, data_repository, ports, gateway)
            served = EmbeddingClient(second["endpoint"]["grpc"], "dino").served
            assert [m["version"] for m in second["deployed"]] == ["2"]
            assert served.contract.lineage["data_version"] == _git_md5(work) != lineage["data_version"]
            assert served.contract.lineage["data_revision"] == _git(work, "rev-parse", "HEAD")
            runs2 = {g["labels"].get("run") for g in _gateway_groups(gateway)
                     if g["labels"].get("job") == "dino-train"}
            assert len(runs2) == 2  # each run's training metrics under its own run id
        finally:
            stop_local_server(tmp_path / "local" / "triton")


def _git_md5(work: Path) -> str:
    import yaml

    return yaml.safe_load((work / "data.dvc").read_text())["outs"][0]["md5"]
