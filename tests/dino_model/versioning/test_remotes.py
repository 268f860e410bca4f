"""Remote configuration: where secrets go, the dvc-s3 plugin check, and a real S3-compatible round trip."""

from __future__ import annotations

import configparser
import shutil
from pathlib import Path

import pytest

from dino_model.errors import DataError
from dino_model.versioning import add_remote, checkout_version, list_remotes, snapshot, status
from dino_model.versioning import remotes as remotes_module
from dino_model.versioning.remotes import set_default_remote


def _sections(path: Path) -> dict[str, dict[str, str]]:
    parser = configparser.ConfigParser()
    parser.read(path)
    return {name: dict(parser[name]) for name in parser.sections()}


def test_default_local_remote_is_relative(repo: Path) -> None:
    conf = _sections(repo / ".dvc" / "config")
    assert conf["core"] == {"analytics": "False", "remote": "local"}
    assert conf["'remote \"local\"'"] == {"url": "../.dvc-remote"}  # moves with the checkout
    [info] = list_remotes(repo)
    assert (info.name, info.default) == ("local", True)
    assert Path(info.url) == (repo / ".dvc-remote").resolve()


def test_s3_remote_keeps_secrets_out_of_committed_config(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")
    add_remote(repo, "minio", "s3://bucket/dvc", endpoint_url="http://minio:9000", default=True)
    committed = (repo / ".dvc" / "config").read_text()
    assert "s3://bucket/dvc" in committed and "endpointurl = http://minio:9000" in committed
    assert "s3cr3t" not in committed and not (repo / ".dvc" / "config.local").exists()
    add_remote(repo, "minio", "s3://bucket/dvc", endpoint_url="http://minio:9000", store_credentials=True)
    local = _sections(repo / ".dvc" / "config.local")["'remote \"minio\"'"]
    assert local == {"access_key_id": "AKIDEXAMPLE", "secret_access_key": "s3cr3t-value"}
    assert "s3cr3t" not in (repo / ".dvc" / "config").read_text()
    assert ".dvc/config.local" not in _git_tracked(repo) and _git_ignores(repo, ".dvc/config.local")


def _git_tracked(repo: Path) -> str:
    from dino_model.versioning.repo import git

    return git(repo, "ls-files")


def _git_ignores(repo: Path, path: str) -> bool:
    from dino_model.versioning.repo import git

    return bool(git(repo, "check-ignore", path, check=False).strip())


def test_store_credentials_needs_them_in_the_environment(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    with pytest.raises(DataError, match="AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY"):
        add_remote(repo, "minio", "s3://bucket/dvc", store_credentials=True)
    with pytest.raises(DataError, match="apply to s3:// remotes"):
        add_remote(repo, "other", str(repo.parent / "elsewhere"), endpoint_url="http://x:9000")
    with pytest.raises(DataError, match="must be letters"):
        add_remote(repo, "bad name", "s3://bucket")


def test_local_only_remote_and_default(repo: Path) -> None:
    add_remote(repo, "shared", str(repo.parent / "shared-remote"), local=True)
    assert "shared" not in (repo / ".dvc" / "config").read_text()
    assert "shared" in (repo / ".dvc" / "config.local").read_text()
    set_default_remote(repo, "shared", local=True)
    assert {r.name: r.default for r in list_remotes(repo)} == {"local": False, "shared": True}
    snapshot(repo)
    assert (repo.parent / "shared-remote" / "files" / "md5").is_dir()
    assert not (repo / ".dvc-remote").exists()
    with pytest.raises(DataError, match="'nope' is not configured"):
        set_default_remote(repo, "nope")


def test_missing_plugin_is_named(repo: Path, fingerprint, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(remotes_module.PLUGINS, "s3", ("dvc_s3_not_installed", "pip install 'dino-mlops[s3]'"))
    add_remote(repo, "minio", "s3://bucket/dvc", endpoint_url="http://127.0.0.1:1", default=True)
    before = fingerprint(repo)
    with pytest.raises(DataError, match=r"need the dvc-s3-not-installed plugin.*dino-mlops\[s3\]"):
        snapshot(repo, "v1")
    assert fingerprint(repo) == before
    assert "dvc-s3-not-installed" in status(repo)["remote_error"]


@pytest.fixture
def s3_endpoint(free_port: int, monkeypatch: pytest.MonkeyPatch):
    """A real S3 API (moto's server) on a loopback port, with a bucket and credentials in the environment."""
    pytest.importorskip("dvc_s3", reason="S3 remotes need: pip install 'dino-mlops[s3]'")
    server_mod = pytest.importorskip("moto.server", reason="the S3 round trip needs: pip install 'moto[server]'")
    import boto3

    for var, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing-secret"),
                       ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(var, value)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{free_port}"
    boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(Bucket="data")
    yield url
    server.stop()


def test_s3_compatible_round_trip(repo: Path, s3_endpoint: str, fingerprint) -> None:
    add_remote(repo, "s3", "s3://data/dino", endpoint_url=s3_endpoint, default=True)
    v1 = snapshot(repo, "v1")
    fp1 = fingerprint(repo)
    (repo / "data" / "toy" / "train" / "a" / "0.png").write_bytes(b"edited")
    snapshot(repo, "v2")
    assert not (repo / ".dvc-remote").exists()  # everything went to the S3 endpoint
    assert status(repo)["in_remote"] is True
    shutil.rmtree(repo / ".dvc" / "cache")
    assert checkout_version(repo, v1.rev).md5 == v1.md5
    assert fingerprint(repo) == fp1
    assert "testing-secret" not in (repo / ".dvc" / "config").read_text()
