"""`dino-mlops data ...` end to end: JSON results on stdout, one-line errors with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    return subprocess.run([sys.executable, "-m", "dino_model.cli", "data", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, check=False, timeout=120)


def _ok(*args: str, cwd: Path) -> dict:
    proc = _cli(*args, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # stdout holds the result only: DVC's console output is silenced


def test_snapshot_log_diff_pull_status(repo: Path) -> None:
    v1 = _ok("snapshot", "-m", "first", cwd=repo / "data")  # the repository is found from a sub-folder
    (repo / "data" / "toy" / "train" / "a" / "0.png").write_bytes(b"edited")
    assert _ok("status", cwd=repo)["workspace"] == "modified"
    v2 = _ok("snapshot", "-m", "second", cwd=repo)
    log = _ok("log", cwd=repo)["versions"]
    assert [(v["md5"], v["subject"]) for v in log] == [(v2["md5"], "second"), (v1["md5"], "first")]
    changes = _ok("diff", v1["rev"], v2["rev"], cwd=repo)
    assert changes["modified"] == ["data/toy/train/a/0.png"] and changes["n_added"] == 0
    pulled = _ok("pull", v1["md5"], cwd=repo)
    assert pulled["rev"] == v1["rev"] and pulled["nfiles"] == 6
    assert _ok("status", cwd=repo)["workspace"] == "clean"


def test_remote_commands(repo: Path) -> None:
    added = _ok("remote", "add", "minio", "s3://bucket/dvc", "--endpoint-url", "http://minio:9000", cwd=repo)
    assert added == {"name": "minio", "url": "s3://bucket/dvc", "default": False, "endpoint_url": "http://minio:9000"}
    assert _ok("remote", "default", "minio", "--local", cwd=repo) == {"default": "minio"}
    listed = {r["name"]: r["default"] for r in _ok("remote", "list", cwd=repo)["remotes"]}
    assert listed == {"local": False, "minio": True}


@pytest.mark.parametrize(("args", "message"), [
    (("pull", "no-such-rev"), "unknown data version 'no-such-rev'"),
    (("pull", "--force", "--remote", "nope", "f" * 32), "DVC remote 'nope' is not configured"),
    (("snapshot", "--remote", "nope"), "DVC remote 'nope' is not configured"),
])
def test_errors_are_one_line_with_exit_code_2(repo: Path, args: tuple[str, ...], message: str) -> None:
    proc = _cli(*args, cwd=repo)
    assert proc.returncode == 2
    assert proc.stdout == ""
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("dino-mlops: error: ") and message in last


def test_outside_a_repository(tmp_path: Path) -> None:
    proc = _cli("status", cwd=tmp_path)
    assert proc.returncode == 2 and "no DVC repository at or above" in proc.stderr


def test_materialize(tmp_path: Path) -> None:
    out = _ok("materialize", "faces", str(tmp_path / "faces"), cwd=tmp_path)
    assert out == {"root": str(tmp_path / "faces"), "train": str(tmp_path / "faces" / "train"),
                   "val": str(tmp_path / "faces" / "val")}
    assert sum(1 for _ in (tmp_path / "faces").rglob("*.png")) == 200
