"""The retraining CronJob's pod, as `kubectl kustomize k8s/overlays/dev` renders it, run by podman.

No KFP API server can run here, so the multi-user KFP stand-in of tests/fixtures/kfp_api.py plays,
on the host, the KFP v2beta1 API that the real `kfp.Client` inside the pod calls: it records every
request, refuses what a multi-user KFP refuses without a namespace, and checks each body with
kfp-server-api's models, so it is a request a real KFP would accept. The data repository is a real
git + DVC repository whose bare clone on the host is bind-mounted into the pod and cloned there
through a file:// URL.

The rendered dev overlay is played through the shared translation, tests/fixtures/kube_play.py (its
docstring lists everything it changes, and it logs each change): the CronJob's job pod with its users,
fsGroup and mounts as rendered; the claim `retrain-state` as a podman volume that outlives each pod and
gets the kubelet's fsGroup semantics (no chown); the Secret `data-repo-credentials` given as an operator
creates it; the projected KFP token as a host file. What this test asks of it: host networking, the
bare data repository added read-only at /srv/data (the git server's stand-in, owned by the image's user
because git refuses a repository of another owner), and four ConfigMap entries pointing where their
peers are here: DINO_DATA_REPO=file:///srv/data/data.git, KFP_HOST=http://127.0.0.1:<stand-in>,
DINO_TRITON_URL=127.0.0.1:<closed port> (nothing served) and DINO_PUSHGATEWAY unset (none here).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fixtures.kfp_api import KfpApi, validated
from fixtures.kube_play import HostVolume, Options, provisioned, running, translate, volume_root

pytestmark = [pytest.mark.slow]

logger = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[2]
UID = 10001  # the image's user (Dockerfile), owner of what the pod must read or write
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t.invalid", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t.invalid"}
TOKEN = "projected-token-for-kfp"
IN_POD_REPO = "file:///srv/data/data.git"


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV}).stdout.strip()


class DataRepository:
    """A git + DVC working repository on the host and its bare clone, the one the pod clones."""

    def __init__(self, base: Path) -> None:
        from dino_model.versioning.repo import init_repo

        self.work, self.bare, self.remote = base / "work", base / "data" / "data.git", base / "dvc-remote"
        self.work.mkdir()
        self.remote.mkdir()
        _git(self.work, "init", "-q", "-b", "main")
        init_repo(self.work, remote_dir=self.remote)
        _git(self.work, "add", "-A")
        _git(self.work, "commit", "-qm", "dvc init")
        self.bare.parent.mkdir()
        _git(base, "init", "-q", "--bare", "-b", "main", str(self.bare))
        _git(self.work, "remote", "add", "origin", str(self.bare))
        _git(self.work, "push", "-q", "origin", "main")
        _git(self.work, "checkout", "-q", "-b", "dev")  # the dev overlay tracks DINO_DATA_REV=dev
        self.versions = 0

    def push_new_version(self) -> str:
        """A new data/ content, snapshotted with DVC, committed on dev and pushed; returns its md5."""
        from dino_model.versioning.sync import snapshot

        self.versions += 1
        folder = self.work / "data" / "train" / f"class{self.versions}"
        folder.mkdir(parents=True)
        (folder / "sample.txt").write_text(f"sample {self.versions}\n")
        saved = {k: os.environ.get(k) for k in GIT_ENV}
        os.environ.update(GIT_ENV)
        try:
            version = snapshot(self.work, f"data version {self.versions}")
        finally:
            for key, value in saved.items():
                os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
        _chown(self.bare.parent, "0:0")  # git refuses a repository owned by another user (safe.directory)
        _git(self.work, "push", "-q", "origin", "dev")
        _chown(self.bare.parent)
        return version.md5


def _chown(path: Path, owner: str = f"{UID}:{UID}") -> None:
    subprocess.run(["chown", "-R", owner, str(path)], check=True)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def setting(podman, tmp_path: Path) -> Iterator[dict]:
    """Rendered dev overlay played through kube_play, data repository, KFP stand-in; removed afterwards."""
    rendered = list(yaml.safe_load_all(subprocess.run(
        [str(REPO_ROOT / ".venv" / "bin" / "kubectl"), "kustomize", str(REPO_ROOT / "k8s" / "overlays" / "dev")],
        check=True, capture_output=True, text=True).stdout))
    tag = uuid.uuid4().hex[:8]
    base = Path(tempfile.mkdtemp(prefix=f"retrain-{tag}-"))  # not under pytest's 0700 folder: uid 10001 reads it
    base.chmod(0o755)
    repo = DataRepository(base)
    recorder = KfpApi(multi_user=True)
    options = Options(
        suffix=tag, workdir=base / "host", network="host", service_account_token=TOKEN,
        secrets={"data-repo-credentials": {"username": "retrain", "token": "unused-by-file-urls"}},
        host_volumes=(HostVolume(name="data-repository", path=repo.bare.parent, container="retrain-check",
                                 mount_path="/srv/data"),),
        endpoints={"DINO_DATA_REPO": IN_POD_REPO, "KFP_HOST": f"http://127.0.0.1:{recorder.port}",
                   "DINO_TRITON_URL": f"127.0.0.1:{_closed_port()}", "DINO_PUSHGATEWAY": ""})
    plan = translate(rendered, "CronJob", "retrain-check", options)
    try:
        with provisioned(podman, plan):
            yield {"rendered": rendered, "repo": repo, "recorder": recorder, "plan": plan,
                   "played": tmp_path / "pod.yaml", "state": volume_root(podman, plan, "retrain-state") / "state.json"}
    finally:
        recorder.close()
        shutil.rmtree(base, ignore_errors=True)
    assert not recorder.invalid, f"requests KFP's models reject: {recorder.invalid}"


def _play(podman, s: dict, *, kill_when_run_posted: bool = False, timeout: float = 240) -> tuple[int, str]:
    """Play the pod once, wait for its container to end; returns (exit code, logs). The pod is removed."""
    container = s["plan"].pod("retrain-check").container("retrain-check")
    with running(podman, s["plan"], s["played"], play_timeout=120):
        if kill_when_run_posted:
            assert s["recorder"].run_received.wait(timeout), podman("logs", container).stderr
            killed = podman("kill", "--signal", "KILL", container)
            assert killed.returncode == 0, killed.stderr
            s["recorder"].release.set()
        waited = podman("wait", container, timeout=timeout)
        logs = podman("logs", container)
        return int(waited.stdout.strip()), logs.stdout + logs.stderr


def _state(s: dict) -> dict:
    return json.loads(s["state"].read_text())


def _overlay_run(s: dict):
    """The rendered overlay's RetrainSettings (its ConfigMap and the pod's env) and the CronJob's image."""
    from pipelines.retrain_settings import settings_from_env

    cron = next(d for d in s["rendered"] if d["kind"] == "CronJob" and d["metadata"]["name"] == "retrain-check")
    (container,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    name = next(e["configMapRef"]["name"] for e in container["envFrom"] if "configMapRef" in e)
    data = next(d for d in s["rendered"] if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name)["data"]
    env = {**data, **{e["name"]: e["value"] for e in container["env"] if "value" in e}}
    return settings_from_env(env), container["image"]


def _check_run_request(s: dict, body: dict, md5: str) -> None:
    """The run request is a valid V2beta1Run for the training pipeline with the overlay's parameters."""
    settings, image = _overlay_run(s)
    run = validated(body, "V2beta1Run")
    assert run.display_name == f"dino-retrain-{md5[:12]}"
    assert s["recorder"].experiment_namespace(run.experiment_id) == settings.namespace
    assert run.runtime_config.parameters == {**settings.params, "data_repo": IN_POD_REPO, "data_version": md5}
    spec = body["pipeline_spec"]  # with Kubernetes settings (Secrets as env), kfp sends {pipeline_spec, platform_spec}
    spec, platform = (spec["pipeline_spec"], spec["platform_spec"]) if "platform_spec" in spec else (spec, {})
    declared = spec["root"]["inputDefinitions"]["parameters"]
    assert {"data_repo", "data_version", "dvc_remote"} <= set(declared)
    assert spec["pipelineInfo"]["name"] and "kubernetes" in platform.get("platforms", {})
    assert {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()} == {image}


def test_cronjob_pod_submits_one_run_per_data_version_across_pods_and_a_kill(podman, setting) -> None:
    s, recorder, repo = setting, setting["recorder"], setting["repo"]
    first = repo.push_new_version()

    # 1. nothing served, no state: one run for the current version
    started = time.monotonic()
    code, logs = _play(podman, s)
    first_play_s = time.monotonic() - started
    assert code == 0, logs
    assert [b["display_name"] for b in recorder.posted("/apis/v2beta1/runs")] == [f"dino-retrain-{first[:12]}"]
    _check_run_request(s, recorder.posted("/apis/v2beta1/runs")[0], first)
    (experiment,) = recorder.posted("/apis/v2beta1/experiments")
    validated(experiment, "V2beta1Experiment")
    assert _state(s)["submitted_md5"] == first and _state(s)["run_id"] == recorder.runs[0]["run_id"]
    assert {r["authorization"] for r in recorder.requests} == {f"Bearer {TOKEN}"}

    # 2. a new pod, no new data: the state on the claim says it was submitted, nothing is posted
    code, logs = _play(podman, s)
    assert code == 0, logs
    assert len(recorder.posted("/apis/v2beta1/runs")) == 1 and '"action": "none"' in logs

    # 3. a new data version pushed: exactly one more run, recorded on the claim
    second = repo.push_new_version()
    assert second != first
    code, logs = _play(podman, s)
    assert code == 0, logs
    runs = recorder.posted("/apis/v2beta1/runs")
    assert [b["display_name"] for b in runs] == [f"dino-retrain-{first[:12]}", f"dino-retrain-{second[:12]}"]
    _check_run_request(s, runs[1], second)
    assert _state(s)["submitted_md5"] == second and _state(s)["run_id"] == recorder.runs[1]["run_id"]

    # 4. a third version; the pod is SIGKILLed while KFP holds its answer to the run's creation
    third = repo.push_new_version()
    recorder.hold_runs = True
    code, _ = _play(podman, s, kill_when_run_posted=True)
    recorder.hold_runs = False
    assert code == 137
    assert _state(s)["pending_md5"] == third and _state(s)["submitted_md5"] == second

    # 5. the next pod adopts the run KFP created instead of submitting a second one
    code, logs = _play(podman, s)
    assert code == 0, logs
    runs = recorder.posted("/apis/v2beta1/runs")
    assert [b["display_name"] for b in runs].count(f"dino-retrain-{third[:12]}") == 1 and len(runs) == 3
    _check_run_request(s, runs[2], third)
    assert _state(s)["submitted_md5"] == third and _state(s)["run_id"] == recorder.runs[2]["run_id"]
    assert len(recorder.posted("/apis/v2beta1/experiments")) == 1, "the experiment is found, not created again"
    logger.info("first play took %.1f s", first_play_s)
