"""A real Prometheus scraping a real tritonserver: request counts, failures and the rules on real metrics."""

from __future__ import annotations

import time
import urllib.request

import numpy as np
import pytest

from dino_model.monitoring.promql import query, wait_for_series

pytestmark = [pytest.mark.prometheus, pytest.mark.triton]

N_OK, N_FAILED = 5, 2


def _triton_counters(port: int) -> dict[str, float]:
    """The identity model's counters read straight from Triton's /metrics (the independent reference)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    wanted = ("nv_inference_request_success", "nv_inference_request_duration_us", "nv_inference_queue_duration_us")
    out: dict[str, float] = {}
    for line in text.splitlines():
        name = line.split("{", 1)[0]
        if name in wanted and 'model="identity"' in line:
            out[name] = float(line.rsplit(" ", 1)[1])
    return out


def _wait_value(base: str, expr: str, expected: float, *, rel: float, timeout_s: float = 30.0) -> float:
    deadline = time.monotonic() + timeout_s
    while True:
        result = query(base, expr)
        value = float(result[0]["value"][1]) if result else float("nan")
        if value == pytest.approx(expected, rel=rel) or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


def test_prometheus_sees_tritons_requests_and_rules_compute_from_them(stack, triton) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    base = stack.prometheus
    success = 'nv_inference_request_success{job="triton", model="identity"}'
    wait_for_series(base, success, timeout_s=30)  # scraped at 0 before any request

    client = httpclient.InferenceServerClient(triton)
    try:
        for value in [1.0] * N_OK + [-1.0] * N_FAILED:
            tensor = httpclient.InferInput("INPUT0", [1, 4], "FP32")
            tensor.set_data_from_numpy(np.full((1, 4), value, dtype=np.float32))
            if value > 0:
                np.testing.assert_array_equal(client.infer("identity", [tensor]).as_numpy("OUTPUT0"),
                                              np.full((1, 4), value, dtype=np.float32))
            else:
                with pytest.raises(InferenceServerException, match="negative input"):
                    client.infer("identity", [tensor])
    finally:
        client.close()

    assert float(wait_for_series(base, f"{success} == {N_OK}")[0]["value"][1]) == N_OK
    failed = wait_for_series(base, 'nv_inference_request_failure{model="identity", reason="BACKEND"} > 0')
    assert float(failed[0]["value"][1]) == N_FAILED
    # quantiles exist because the server runs with summary_latencies=true; the p99 rule reads this series
    p99 = wait_for_series(base, 'nv_inference_request_summary_us{model="identity", quantile="0.99"}')
    assert float(p99[0]["value"][1]) > 0

    ratio = _wait_value(base, 'model:nv_inference_error_ratio:rate5m{model="identity"}',
                        N_FAILED / (N_OK + N_FAILED), rel=1e-9)
    assert ratio == pytest.approx(N_FAILED / (N_OK + N_FAILED), rel=1e-9)
    counters = _triton_counters(stack.triton_metrics_port)
    assert counters["nv_inference_request_success"] == N_OK
    mean = counters["nv_inference_request_duration_us"] / counters["nv_inference_request_success"]
    got = _wait_value(base, 'model:nv_inference_request_duration_us:mean5m{model="identity"}', mean, rel=1e-9)
    assert got == pytest.approx(mean, rel=1e-9)
    queue = counters["nv_inference_queue_duration_us"] / counters["nv_inference_request_success"]
    got = _wait_value(base, 'model:nv_inference_queue_duration_us:mean5m{model="identity"}', queue, rel=1e-9)
    assert got == pytest.approx(queue, rel=1e-9)
    assert not query(base, 'ALERTS{alertname=~"Triton.*", alertstate="firing"}')
