"""Several Triton replicas on one model repository (the cluster's claim): a deploy switches every one of them.

Two real tritonservers, one on 127.0.0.1 and one on 127.0.0.2 (both loopback), serve the same repository
with the same admin key, as two pods of the Deployment do; clients load both while the deploy runs.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from dino_model.errors import ConfigError, ServingError
from dino_model.serving.client import EmbeddingClient, replica_urls
from dino_model.serving.loadtest import LoadGenerator
from dino_model.serving.rollout import deploy, ready_versions
from dino_model.triton.ensemble import EntryPoints

pytestmark = pytest.mark.triton

# the models `triton-repo` writes beside `dino` (no unpack step: the cpu flavour preprocesses in Python)
ENTRY_POINTS = [name for name in EntryPoints("dino").all if name != EntryPoints("dino").unpack]
KEY = "replicas-test-admin-key"


def test_replica_urls_resolve_every_address() -> None:
    assert replica_urls("127.0.0.1:8001") == ["127.0.0.1:8001"]
    expected = sorted({info[4][0] for info in socket.getaddrinfo("localhost", 8001, type=socket.SOCK_STREAM)})
    assert replica_urls("localhost:8001") == [f"[{a}]:8001" if ":" in a else f"{a}:8001" for a in expected]
    with pytest.raises(ConfigError, match="host:port"):
        replica_urls("triton-grpc")
    with pytest.raises(ServingError, match="cannot resolve Triton's host 'no-such-host.invalid'"):
        replica_urls("no-such-host.invalid:8001")


@pytest.fixture
def two_replicas(tmp_path: Path, tiny_onnx: Path, triton_tools):
    repository = triton_tools.write_cpu_repository(tiny_onnx, tmp_path / "claim")
    servers = [triton_tools.start(repository, address=address, admin_key=KEY) for address in ("127.0.0.1", "127.0.0.2")]
    try:
        yield repository, servers
    finally:
        for server in servers:
            server.stop()


def test_a_deploy_switches_every_replica_with_zero_failed_requests(two_replicas, tiny_onnx_fp16: Path) -> None:
    repository, servers = two_replicas
    urls = [server.grpc_url for server in servers]
    headers = servers[0].admin_headers
    loads = [LoadGenerator(url, clients=2).start() for url in urls]
    try:
        result = deploy(tiny_onnx_fp16, repository, url=urls[0], replicas=urls, headers=headers)
    finally:
        reports = [load.stop() for load in loads]
    assert result["version"] == 2 and result["serving_versions"] == [2]
    for url, report in zip(urls, reports, strict=True):
        assert report.errors == 0, (url, report.error_samples)
        assert ready_versions(EmbeddingClient(url, headers=headers)) == [2], url
    # nothing of the candidate is left on any replica
    for url in urls:
        index = EmbeddingClient(url, headers=headers).raw.get_model_repository_index(headers=headers, as_json=True)
        assert {m["name"] for m in index["models"] if m.get("state") == "READY"} == {"dino", *ENTRY_POINTS}, url


def test_a_replica_that_cannot_load_rolls_every_replica_back(two_replicas, tiny_onnx_fp16: Path) -> None:
    """One replica down (a pod being replaced): the deploy fails and the other keeps serving version 1."""
    repository, servers = two_replicas
    urls = [server.grpc_url for server in servers]
    headers = servers[0].admin_headers
    servers[1].stop()
    with pytest.raises(ServingError, match=r"cannot reach Triton|failed|not deployed"):
        deploy(tiny_onnx_fp16, repository, url=urls[0], replicas=urls, headers=headers)
    assert ready_versions(EmbeddingClient(urls[0], headers=headers)) == [1]
    assert sorted(p.name for p in (repository / "dino").iterdir() if p.is_dir()) == ["1"]
