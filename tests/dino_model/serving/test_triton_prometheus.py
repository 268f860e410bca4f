"""The exported model on the real tritonserver, scraped by a real Prometheus: requests show up in its API.

Continues test_triton_server's gRPC parity check on the same session server: this test sends a known
number of gRPC requests and finds Triton's request counter for the model through /api/v1/query.
"""

from __future__ import annotations

import numpy as np
import pytest

from dino_model.errors import ServingError
from dino_model.monitoring.prometheus import find_binary, run_prometheus, write_prometheus_config
from dino_model.monitoring.promql import query, wait_for_series
from dino_model.runtime.processes import free_ports
from dino_model.serving.client import EmbeddingClient

pytestmark = [pytest.mark.triton, pytest.mark.prometheus]


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    import os

    try:
        return find_binary("prometheus")
    except ServingError as exc:  # a missing binary is a skip unless CI requires it
        if os.environ.get("DINO_REQUIRE_PROMETHEUS") == "1":
            pytest.fail(f"prometheus is required: {exc}")
        pytest.skip(f"prometheus is not installed ({exc}); apt-get install prometheus")


def test_prometheus_sees_the_request_count_of_the_served_model(served, prometheus_binary, tmp_path) -> None:
    client = EmbeddingClient(served.grpc_url, "dino")
    before = _success_count(served.metrics_url)
    images = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    for _ in range(5):
        assert client.infer(images)["embedding"].shape[0] == 2
    expected = before + 5
    metrics_target = served.metrics_url.removeprefix("http://").removesuffix("/metrics")
    config = write_prometheus_config(tmp_path / "prom", triton_targets=[metrics_target], scrape_interval="1s")
    (port,) = free_ports(1)
    with run_prometheus(config, port=port, storage_dir=tmp_path / "tsdb") as base_url:
        expr = f'nv_inference_request_success{{model="dino",version="1"}} >= {expected}'
        series = wait_for_series(base_url, expr, timeout_s=60)
        assert float(series[0]["value"][1]) == expected
        up = query(base_url, 'up{job=~".*triton.*"}')
        assert up and up[0]["value"][1] == "1"


def _success_count(metrics_url: str) -> float:
    import urllib.request

    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith('nv_inference_request_success{model="dino",version="1"}'):
                return float(line.rsplit(" ", 1)[1])
    return 0.0
