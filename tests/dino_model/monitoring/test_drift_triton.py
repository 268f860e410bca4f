"""The drift gauges on a real tritonserver: the `cpu` flavour's backend serves them on the metrics port."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from dino_model.monitoring.drift import DriftReference, drift_path
from dino_model.serving.client import EmbeddingClient

pytestmark = pytest.mark.triton


def _gauge(metrics_url: str, name: str) -> float | None:
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    labels = r'\{(?=[^}]*model="dino")(?=[^}]*version="1")[^}]*\}'
    found = re.search(rf"^{name}{labels} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


def test_triton_exports_the_drift_gauges(tiny_export, tiny_onnx: Path, cpu_repository: Path, start_server) -> None:
    reference = DriftReference.load(drift_path(tiny_onnx))
    assert (cpu_repository / "dino" / "1" / "drift.npz").is_file()
    server = start_server(cpu_repository)
    assert _gauge(server.metrics_url, "dino_embedding_drift_threshold") == pytest.approx(reference.threshold)
    client = EmbeddingClient(server.grpc_url, "dino")
    rng = np.random.default_rng(0)
    for _ in range(reference.window // 8):  # exactly one full window: the first value is computed
        client.infer(rng.standard_normal((8, 3, 32, 32)).astype(np.float32) * 3)
    value = _gauge(server.metrics_url, "dino_embedding_drift_mmd2")
    assert value is not None and value > reference.threshold  # noise images are far from the digits
