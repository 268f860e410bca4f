"""The real kfp.Client against a multi-user KFP stand-in (tests/fixtures/kfp_api.py), in this process.

What a retraining check or `pipeline submit` sends is checked request by request: the namespace on
every call a multi-user KFP requires it for, runs of the registered pipeline version, the overlay's
parameters and image, resubmission of a FAILED run after its backoff and giving up after the limit
(with the metric the alert reads), and recurring runs as KFP wants them (six-field cron, no catch-up,
one at a time, a data repository to train on).
"""

from __future__ import annotations

import json
import re
import shlex
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dino_model.cli.main import main
from dino_model.errors import PipelineError
from dino_model.versioning.sync import snapshot
from dino_model.versioning.versions import version_at
from pipelines.retrain import check, kfp_run_state, kfp_submitter, read_state, run_name
from pipelines.retrain_settings import RetryPolicy

REPO_ROOT = Path(__file__).resolve().parents[2]
API = "/apis/v2beta1"
NAMESPACE = "team-a"
IMAGE = "registry.example/dino-mlops:dev-1"
SETTINGS = {"KFP_NAMESPACE": NAMESPACE, "DINO_PARAM_gpus": "0", "DINO_PARAM_config": "digits_vit_tiny",
            "DINO_PARAM_triton_flavour": "cpu", "DINO_PARAM_triton_url": "triton-grpc.dino-mlops-dev.svc:8001"}
PARAMS = {"gpus": 0, "config": "digits_vit_tiny", "triton_flavour": "cpu",
          "triton_url": "triton-grpc.dino-mlops-dev.svc:8001"}


@pytest.fixture
def md5(repo) -> str:
    snapshot(repo, "first data version")
    return version_at(repo, "HEAD").md5


@pytest.fixture
def settings_env(monkeypatch) -> None:
    for key in ("KFP_NAMESPACE", "DINO_PIPELINE", "DINO_IMAGE", "DINO_PUSHGATEWAY"):
        monkeypatch.delenv(key, raising=False)
    for key, value in SETTINGS.items():
        monkeypatch.setenv(key, value)


def _check_cli(repo: Path, api, state: Path) -> int:
    return main(["retrain", "check", "--repo", str(repo), "--host", api.url, "--state", str(state),
                 "--timeout", "120"])


def _namespaces_sent(api) -> dict[str, set]:
    """Per endpoint, the namespaces the calls that carry one sent (query or body)."""
    seen: dict[str, set] = {}
    for r in api.requests:
        if r["path"] == f"{API}/experiments":
            ns = r["query"].get("namespace") if r["method"] == "GET" else r["body"].get("namespace")
            seen.setdefault(f"{r['method']} experiments", set()).add(ns)
        if r["path"] == f"{API}/runs" and r["method"] == "GET":
            seen.setdefault("GET runs", set()).add(r["query"].get("namespace") or r["query"].get("experiment_id"))
    return seen


def test_check_sends_the_namespace_the_overlay_names_and_the_runs_parameters(md5, repo, tmp_path, kfp_api,
                                                                            settings_env, monkeypatch, capsys):
    monkeypatch.setenv("DINO_IMAGE", IMAGE)
    assert _check_cli(repo, kfp_api, tmp_path / "s.json") == 0, capsys.readouterr().err
    (experiment,) = kfp_api.experiments
    assert experiment["namespace"] == NAMESPACE
    assert _namespaces_sent(kfp_api) == {"GET experiments": {NAMESPACE}, "POST experiments": {NAMESPACE}}
    (run,) = kfp_api.runs
    assert run["display_name"] == run_name(md5) and run["experiment_id"] == experiment["experiment_id"]
    assert run["runtime_config"]["parameters"] == {**PARAMS, "data_version": md5}
    spec = run["pipeline_spec"].get("pipeline_spec", run["pipeline_spec"])
    assert {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()} == {IMAGE}
    assert not kfp_api.refused


def test_multi_user_kfp_refuses_a_check_without_namespace(md5, repo, tmp_path, kfp_api, settings_env, monkeypatch,
                                                         capsys):
    monkeypatch.delenv("KFP_NAMESPACE")
    state = tmp_path / "s.json"
    assert _check_cli(repo, kfp_api, state) == 2
    err = capsys.readouterr().err
    assert "stays pending" in err and "ListExperiments requires filtering by namespace" in err
    assert kfp_api.runs == [] and read_state(state).pending_md5 == md5


def test_check_runs_the_registered_pipeline_version_of_the_namespace(md5, repo, tmp_path, kfp_api, settings_env,
                                                                     monkeypatch, capsys):
    kfp_api.add_pipeline("dino-training", ["0.0.9"])  # a shared pipeline of the same name, an older version
    ids = kfp_api.add_pipeline("dino-training", ["0.1.0"], namespace=NAMESPACE)
    monkeypatch.setenv("DINO_PIPELINE", "dino-training@0.1.0")
    assert _check_cli(repo, kfp_api, tmp_path / "s.json") == 0, capsys.readouterr().err
    (run,) = kfp_api.runs
    assert run["pipeline_version_reference"] == {"pipeline_id": ids["pipeline_id"], "pipeline_version_id": ids["0.1.0"]}
    assert "pipeline_spec" not in run
    assert run["runtime_config"]["parameters"] == {**PARAMS, "data_version": md5}
    assert [r["query"].get("namespace") for r in kfp_api.requests if r["path"] == f"{API}/pipelines"] == [NAMESPACE]


def test_a_registered_version_that_does_not_exist_is_named(md5, repo, tmp_path, kfp_api, settings_env, monkeypatch,
                                                           capsys):
    kfp_api.add_pipeline("dino-training", ["0.1.0"], namespace=NAMESPACE)
    monkeypatch.setenv("DINO_PIPELINE", "dino-training@9.9.9")
    assert _check_cli(repo, kfp_api, tmp_path / "s.json") == 2
    assert "pipeline 'dino-training' has no version '9.9.9'" in capsys.readouterr().err
    assert kfp_api.runs == []


def test_a_misspelt_parameter_fails_the_check_with_its_name(md5, repo, tmp_path, kfp_api, settings_env,
                                                            monkeypatch, capsys):
    monkeypatch.setenv("DINO_PARAM_gpu", "0")
    assert _check_cli(repo, kfp_api, tmp_path / "s.json") == 2
    assert "gpu: not a parameter of the training pipeline" in capsys.readouterr().err
    assert kfp_api.requests == []


class Pushgateway:
    """Records the bodies PUT to /metrics/job/<job> (prometheus-client's push_to_gateway)."""

    def __init__(self) -> None:
        self.pushes: list[tuple[str, str]] = []
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_PUT(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                gateway.pushes.append((self.path, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:  # record_data_version asks what the gateway holds
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                data = json.dumps({"status": "success", "data": []}).encode()
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.address = f"127.0.0.1:{self.server.server_address[1]}"

    def gave_up(self) -> list[str]:
        """The dino_retrain_gave_up samples of each push of the job dino-retrain, in order."""
        return [line for path, body in self.pushes if path.startswith("/metrics/job/dino-retrain")
                for line in body.splitlines() if line.startswith("dino_retrain_gave_up{")]


@pytest.fixture
def pushgateway(monkeypatch) -> Iterator[Pushgateway]:
    gateway = Pushgateway()
    monkeypatch.setenv("DINO_PUSHGATEWAY", gateway.address)
    yield gateway
    gateway.server.shutdown()
    gateway.server.server_close()


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_a_failed_run_is_resubmitted_after_its_backoff_then_given_up_with_the_metric(md5, tmp_path, kfp_api,
                                                                                  pushgateway):
    ids = kfp_api.add_pipeline("dino-training", ["0.1.0"], namespace=NAMESPACE)
    submit = kfp_submitter(kfp_api.url, params={"gpus": 0}, namespace=NAMESPACE, registered="dino-training@0.1.0",
                           timeout_s=60)
    reader = kfp_run_state(kfp_api.url, namespace=NAMESPACE, timeout_s=60)
    state, clock, retry = tmp_path / "s.json", Clock(1000.0), RetryPolicy(max_attempts=3, backoff_s=100.0)

    def once() -> dict:
        return check(md5, state_path=state, submit=submit, run_state=reader, retry=retry, now=clock)

    assert once()["action"] == "submitted"
    first = kfp_api.runs[0]["run_id"]
    assert once() == {"action": "none", "data_version": md5, "run_id": first, "attempt": 1, "run_state": "PENDING",
                      "reason": f"run {first} is PENDING"}
    kfp_api.set_run_state(first, "FAILED")
    clock.t = 1099.0  # attempt 2 is due at 1000 + 100 * 2**0
    assert once()["action"] == "waiting" and once()["retry_at"] == 1100.0
    assert len(kfp_api.runs) == 1

    # a check killed after KFP created attempt 2 left it behind: the next check adopts it
    orphan = submit(md5, 2)
    clock.t = 1100.0
    result = once()
    assert (result["action"], result["attempt"], result["run_id"]) == ("resubmitted", 2, orphan)
    assert [r["display_name"] for r in kfp_api.runs] == [run_name(md5), f"dino-retrain-{md5[:12]}-attempt-2"]
    assert read_state(state).attempts == 2 and read_state(state).submitted_at == 1100.0

    kfp_api.set_run_state(orphan, "FAILED")
    clock.t = 1299.0  # attempt 3 is due at 1100 + 100 * 2**1
    assert once()["action"] == "waiting"
    clock.t = 1300.0
    assert once()["action"] == "resubmitted"
    third = kfp_api.runs[2]
    assert third["display_name"] == f"dino-retrain-{md5[:12]}-attempt-3"
    assert third["pipeline_version_reference"]["pipeline_version_id"] == ids["0.1.0"]
    assert third["runtime_config"]["parameters"] == {"gpus": 0, "data_version": md5}

    kfp_api.set_run_state(third["run_id"], "FAILED")
    clock.t = 10_000.0
    assert once()["action"] == "gave_up"
    assert read_state(state).gave_up is True
    assert pushgateway.gave_up()[-1] == f'dino_retrain_gave_up{{data_version="{md5}"}} 1.0'
    assert set(pushgateway.gave_up()[:-1]) == {f'dino_retrain_gave_up{{data_version="{md5}"}} 0.0'}
    assert once()["reason"] == "gave up after 3 failed runs"
    assert len(kfp_api.runs) == 3 and len(kfp_api.posted(f"{API}/runs")) == 3
    assert {r["path"] for r in kfp_api.requests if re.fullmatch(f"{API}/runs/[^/]+", r["path"])} == {
        f"{API}/runs/{r['run_id']}" for r in kfp_api.runs}


class Fixed:
    """A submitter and a run-state reader without KFP."""

    def __init__(self, state: str) -> None:
        self.state, self.calls = state, []

    def submit(self, md5: str, attempt: int = 1) -> str:
        self.calls.append(attempt)
        return f"run-{attempt}"

    def read(self, run_id: str) -> str:
        return self.state


def test_a_canceled_run_is_not_resubmitted(tmp_path):
    fixed = Fixed("CANCELED")
    check("abc.dir", state_path=tmp_path / "s.json", submit=fixed.submit, run_state=fixed.read)
    result = check("abc.dir", state_path=tmp_path / "s.json", submit=fixed.submit, run_state=fixed.read,
                   now=lambda: 1e12)
    assert result["action"] == "none" and result["run_state"] == "CANCELED" and fixed.calls == [1]


def test_a_state_file_from_before_retries_counts_as_one_attempt(tmp_path):
    state = tmp_path / "s.json"
    state.write_text(json.dumps({"submitted_md5": "abc.dir", "run_id": "old", "submitted_at": 5.0,
                                 "pending_md5": ""}))
    fixed = Fixed("FAILED")
    result = check("abc.dir", state_path=state, submit=fixed.submit, run_state=fixed.read, now=lambda: 1e12)
    assert (result["action"], result["attempt"], fixed.calls) == ("resubmitted", 2, [2])


def test_an_unreachable_kfp_while_following_up_leaves_the_state_as_it_was(tmp_path, free_port):
    state = tmp_path / "s.json"
    fixed = Fixed("FAILED")
    check("abc.dir", state_path=state, submit=fixed.submit)
    before = state.read_text()
    with pytest.raises(PipelineError, match=f"127.0.0.1:{free_port}"):
        check("abc.dir", state_path=state, submit=fixed.submit,
              run_state=kfp_run_state(f"http://127.0.0.1:{free_port}", timeout_s=30))
    assert state.read_text() == before


def _recurring(api) -> dict:
    (body,) = api.posted(f"{API}/recurringruns")
    return body


def test_pipeline_submit_schedule_creates_a_recurring_run_kfp_accepts(kfp_api, monkeypatch, capsys):
    monkeypatch.setenv("KFP_NAMESPACE", NAMESPACE)
    code = main(["pipeline", "submit", "--host", kfp_api.url, "--schedule", "0 0 2 * * *",
                 "--param", "data_repo=https://git.example/data.git", "--param", "gpus=0"])
    assert code == 0, capsys.readouterr().err
    body = _recurring(kfp_api)
    assert body["trigger"]["cron_schedule"]["cron"] == "0 0 2 * * *"
    assert body["no_catchup"] is True and int(body["max_concurrency"]) == 1 and body["mode"] == "ENABLE"
    assert body["runtime_config"]["parameters"] == {"data_repo": "https://git.example/data.git", "gpus": 0}
    assert kfp_api.experiment_namespace(body["experiment_id"]) == NAMESPACE
    assert json.loads(capsys.readouterr().out)["recurring_run_id"] == kfp_api.recurring_runs[0]["recurring_run_id"]


def test_a_schedule_without_data_repo_is_refused_before_kfp(kfp_api, capsys):
    code = main(["pipeline", "submit", "--host", kfp_api.url, "--namespace", NAMESPACE, "--schedule", "0 0 2 * * *"])
    assert code == 2 and "--param data_repo=" in capsys.readouterr().err
    assert kfp_api.requests == []


def test_the_readmes_schedule_example_runs_as_written(kfp_api, monkeypatch, capsys):
    """The README's `pipeline submit --schedule` line, pointed at the stand-in, creates a run with a data_repo."""
    lines = [line for line in (REPO_ROOT / "README.md").read_text().splitlines()
             if "pipeline submit" in line and "--schedule" in line]
    assert len(lines) == 1, lines
    words = shlex.split(lines[0].split("#")[0])
    args = words[words.index("pipeline"):]
    args[args.index("--host") + 1] = kfp_api.url
    monkeypatch.setenv("KFP_NAMESPACE", NAMESPACE)
    assert main(args) == 0, capsys.readouterr().err
    assert _recurring(kfp_api)["runtime_config"]["parameters"].get("data_repo")
