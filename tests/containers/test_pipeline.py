"""The compiled pipeline with every step in the project image, as a KFP backend runs it.

kfp.local's DockerRunner starts one container per step from the image (non-root, read-only root
filesystem). The data repository is reachable only by its git URL and the data only from its DVC
remote, a real S3 API (moto's server on the host's loopback, which the containers reach on the host
network), with the credentials passed as the cluster's Secret passes them (AWS_* in each step's
environment); never from the checkout or a mounted folder. Each step that reads images materialises
them from the bucket by md5 (no data artifact). A local tritonserver serves what the deploy step
publishes, and a real Pushgateway receives the steps' metrics and the run's final status. A second
data version pushed to the data repository then trains and deploys version 2 with the new lineage.
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
def data_repository(tmp_path_factory: pytest.TempPathFactory, s3_store) -> dict:
    """A data repository (bare git; DVC remote: a prefix of the moto bucket) with one version of a digits
    subset; the working clone. The store's credentials stay in the environment for the module."""
    from dino_model.data.materialize import materialize
    from dino_model.versioning.remotes import add_remote
    from dino_model.versioning.repo import init_repo
    from dino_model.versioning.sync import snapshot

    patch = pytest.MonkeyPatch()
    for var, value in s3_store.env.items():
        patch.setenv(var, value)
    base = tmp_path_factory.mktemp("data-host")
    digits = base / "digits-source"
    materialize("digits", digits)
    work, bare, remote = base / "work", base / "data.git", s3_store.url("dvc")
    work.mkdir()
    _git(work, "init", "-q", "-b", "main")
    init_repo(work)
    add_remote(work, "store", remote, endpoint_url=s3_store.endpoint, default=True)
    _git(work, "add", "-A")
    _git(work, "commit", "-qm", "dvc init")
    _subset(digits / "train", work / "data" / "train", 25)
    _subset(digits / "val", work / "data" / "val", 8)
    os.environ.update(GIT_ENV)
    snapshot(work, "first data version")
    _git(base, "clone", "-q", "--bare", str(work), str(bare))
    _git(work, "remote", "add", "origin", str(bare))
    yield {"work": work, "url": f"file://{bare}", "remote": remote, "endpoint": s3_store.endpoint, "digits": digits}
    patch.undo()


def _run(tmp: Path, repo: dict, ports: dict, gateway: str):
    from pipelines.local import run_local

    return run_local(tmp, config="tiny", overrides=TINY, min_knn_top1=0.0, require_not_worse=False,
                     linear_epochs=5, output_dir=tmp / "local", pushgateway=gateway, containers=True,
                     data_repo=repo["url"], dvc_remote=repo["remote"], dvc_endpoint_url=repo["endpoint"],
                     train_subdir="train", val_subdir="val", **ports)


def _object_reads(s3_store) -> int:
    """GET requests for DVC objects the S3 server has answered so far."""
    return sum(1 for line in s3_store.log.read_text().splitlines() if '"GET /dino-data/dvc/files/md5/' in line)


def _gateway_groups(gateway: str) -> list[dict]:
    with urllib.request.urlopen(f"http://{gateway}/api/v1/metrics", timeout=10) as response:
        return json.load(response)["data"]


def test_pipeline_in_containers_from_a_git_url_to_triton_then_a_new_version(
        image, docker_env, data_repository, s3_store, tmp_path, monkeypatch):
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
    assert not (work / ".dvc-remote").exists() and s3_store.objects("dvc/")  # the data is only in the bucket
    with run_pushgateway(port=push_port, log_dir=tmp_path) as gateway_url:
        gateway = gateway_url.removeprefix("http://").rstrip("/")
        try:
            reads_before = _object_reads(s3_store)
            first = _run(tmp_path, data_repository, ports, gateway)
            # each reading step fetched its folders from the bucket (no shared cache here): pretraining and
            # the export train/ (250 images), k-NN and the linear probe train/ and val/ (330), attention val/ (80)
            assert _object_reads(s3_store) - reads_before >= 250 + 330 + 330 + 80 + 250
            lineage = EmbeddingClient(first["endpoint"]["grpc"], "dino").served.contract.lineage
            assert lineage["data_version"] == _git_md5(work)
            assert lineage["data_revision"] == _git(work, "rev-parse", "HEAD")
            assert [m["version"] for m in first["deployed"] if m["name"] == "dino"] == ["1"]

            groups = _gateway_groups(gateway)
            runs = {g["labels"].get("run") for g in groups if g["labels"].get("job") == "dino-eval"}
            assert len(runs) == 1 and None not in runs and "model" not in runs, groups  # the KFP run id
            train_runs = {g["labels"].get("run") for g in groups if g["labels"].get("job") == "dino-train"}
            assert runs < train_runs and any(r.startswith("pretrain-") for r in train_runs)  # live, then per run
            status = [g for g in groups if g["labels"].get("job") == "dino-pipeline"]
            assert [g["dino_pipeline_run_succeeded"]["metrics"][0]["value"] for g in status] == ["1"]
            evaluations = {g["labels"].get("evaluation") for g in groups if g["labels"].get("job") == "dino-eval"}
            assert {"knn", "linear"} <= evaluations
            assert any(g["labels"].get("job") == "dino-deploy" for g in groups)
            assert any(g["labels"].get("job") == "dino-data" for g in groups)

            _subset(data_repository["digits"] / "train", work / "data" / "train", 5, offset=25)
            snapshot(work, "second data version")
            _git(work, "push", "-q", "origin", "main")
            second = _run(tmp_path, data_repository, ports, gateway)
            served = EmbeddingClient(second["endpoint"]["grpc"], "dino").served
            assert [m["version"] for m in second["deployed"] if m["name"] == "dino"] == ["2"]
            assert served.contract.lineage["data_version"] == _git_md5(work) != lineage["data_version"]
            assert served.contract.lineage["data_revision"] == _git(work, "rev-parse", "HEAD")
            runs2 = {g["labels"].get("run") for g in _gateway_groups(gateway)
                     if g["labels"].get("job") == "dino-train" and not g["labels"]["run"].startswith("pretrain-")}
            assert len(runs2) == 2  # each run's training metrics under its own run id
        finally:
            stop_local_server(tmp_path / "local" / "triton")


def _git_md5(work: Path) -> str:
    import yaml

    return yaml.safe_load((work / "data.dvc").read_text())["outs"][0]["md5"]
