"""A bounded load test: several concurrent gRPC clients for a fixed time, zero errors, numbers printed."""

from __future__ import annotations

import pytest

from dino_model.serving.loadtest import run_load_test

pytestmark = pytest.mark.triton


def test_concurrent_clients_get_no_errors(served) -> None:
    report = run_load_test(served.grpc_url, clients=4, duration_s=4.0, batch_size=2)
    summary = report.to_dict()
    print(f"\nload test: {summary['clients']} clients x {summary['seconds']} s, batch 2: "
          f"{summary['requests']} requests, {summary['images_per_s']} images/s, "
          f"p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms, errors {summary['errors']}")
    assert report.errors == 0, report.error_samples
    assert report.requests >= 20 and report.versions == {"1": report.requests}
    assert 0 < report.percentile_ms(50) <= report.percentile_ms(99)
    assert report.images_per_s == pytest.approx(2 * report.requests / report.seconds)
