"""Retraining checks on real git + DVC repositories: one run per new data version, even when concurrent.

A KFP API server cannot run here, so runs are counted through the submitter the check calls; the
unreachable-host case uses the real kfp.Client against a closed port.
"""

import threading
import time

import pytest

from dino_model.cli.main import main
from dino_model.errors import PipelineError
from dino_model.versioning.sync import snapshot
from dino_model.versioning.versions import version_at
from pipelines.retrain import check, deployed_data_version, kfp_submitter, read_state


class CountingSubmitter:
    def __init__(self, delay_s: float = 0.0) -> None:
        self.runs: list[str] = []
        self.delay_s = delay_s

    def __call__(self, md5: str, attempt: int = 1) -> str:
        time.sleep(self.delay_s)
        self.runs.append(md5)
        return f"run-{len(self.runs)}"


@pytest.fixture
def versioned(repo):
    snapshot(repo, "first data version")
    return repo


def test_new_version_gives_exactly_one_run_unchanged_gives_none(versioned, write_images, tmp_path):
    state, submit = tmp_path / "state.json", CountingSubmitter()
    first = version_at(versioned, "HEAD").md5
    assert check(first, state_path=state, submit=submit)["action"] == "submitted"
    assert check(first, state_path=state, submit=submit)["action"] == "none"
    write_images(versioned / "data" / "toy" / "train", {"c": 2}, seed=1)
    snapshot(versioned, "second data version")
    second = version_at(versioned, "HEAD").md5
    result = check(second, state_path=state, submit=submit)
    assert result["action"] == "submitted" and result["previous"] == first
    assert submit.runs == [first, second]


def test_deployed_version_needs_no_run(versioned, tmp_path):
    md5 = version_at(versioned, "HEAD").md5
    submit = CountingSubmitter()
    assert check(md5, state_path=tmp_path / "s.json", submit=submit, deployed_md5=md5)["reason"] == "deployed"
    assert submit.runs == []


def test_concurrent_checks_start_one_run(versioned, tmp_path):
    md5 = version_at(versioned, "HEAD").md5
    submit, results = CountingSubmitter(delay_s=0.5), []
    threads = [threading.Thread(target=lambda: results.append(check(md5, state_path=tmp_path / "s.json",
                                                                    submit=submit))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert submit.runs == [md5]
    assert sorted(r["action"] for r in results) == ["none", "none", "none", "submitted"]


def test_unreachable_kfp_host_keeps_the_trigger_pending(versioned, tmp_path, free_port):
    md5 = version_at(versioned, "HEAD").md5
    state = tmp_path / "s.json"
    with pytest.raises(PipelineError, match="stays pending"):
        check(md5, state_path=state, submit=kfp_submitter(f"http://127.0.0.1:{free_port}", params={}))
    assert read_state(state).pending_md5 == md5 and read_state(state).submitted_md5 == ""
    submit = CountingSubmitter()
    assert check(md5, state_path=state, submit=submit)["action"] == "submitted"  # the next check retries
    assert submit.runs == [md5]


def test_cli_exits_non_zero_with_one_error_line(versioned, tmp_path, free_port, capsys):
    code = main(["retrain", "check", "--repo", str(versioned), "--host", f"http://127.0.0.1:{free_port}",
                 "--state", str(tmp_path / "s.json")])
    assert code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dino-mlops: error:")]
    assert len(errors) == 1 and "stays pending" in errors[0] and "Traceback" not in errors[0]


@pytest.fixture
def silent_host():
    """A TCP server that accepts connections and never answers: a hung KFP API."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


def test_a_kfp_host_that_never_answers_times_out_and_releases_the_lock(versioned, tmp_path, silent_host):
    md5 = version_at(versioned, "HEAD").md5
    state = tmp_path / "s.json"
    start = time.monotonic()
    with pytest.raises(PipelineError, match="did not answer within 2 s"):
        check(md5, state_path=state, submit=kfp_submitter(silent_host, params={}, timeout_s=2))
    assert time.monotonic() - start < 30
    assert read_state(state).pending_md5 == md5
    submit = CountingSubmitter()  # the lock was released: the next check proceeds at once
    assert check(md5, state_path=state, submit=submit)["action"] == "submitted"


def test_unreachable_triton_means_no_deployed_version(free_port):
    assert deployed_data_version(f"127.0.0.1:{free_port}") is None
