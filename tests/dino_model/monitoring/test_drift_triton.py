"""The drift gauges on a real tritonserver: the entry points' drift step serves them on the metrics port.

Traffic reaches the step through both ensembles (`dino_monitored`, which `EmbeddingClient.infer`
uses, and `dino_images`, image bytes); requests sent straight to `dino` are not counted. After a
rollout the step reads the new version's reference and relabels its gauges.
"""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from dino_model.monitoring.drift import DriftReference, drift_path
from dino_model.serving.client import EmbeddingClient
from dino_model.serving.rollout import deploy, ready_versions

pytestmark = pytest.mark.triton


def _gauge(metrics_url: str, name: str, version: str = "1") -> float | None:
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    labels = rf'\{{(?=[^}}]*model="dino")(?=[^}}]*version="{version}")[^}}]*\}}'
    found = re.search(rf"^{name}{labels} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


def test_triton_exports_the_drift_gauges(tiny_export, tiny_onnx: Path, cpu_repository: Path, start_server) -> None:
    reference = DriftReference.load(drift_path(tiny_onnx))
    assert (cpu_repository / "dino" / "1" / "drift.npz").is_file()
    server = start_server(cpu_repository)
    client = EmbeddingClient(server.grpc_url, "dino")
    assert client.served.monitored == "dino_monitored"
    rng = np.random.default_rng(0)
    for _ in range(reference.window // 8):
        client.infer(rng.standard_normal((8, 3, 32, 32)).astype(np.float32) * 3, model_version="1")  # not counted
    assert _gauge(server.metrics_url, "dino_embedding_drift_mmd2") is None
    for _ in range(reference.window // 8):  # exactly one full window: the first value is computed
        client.infer(rng.standard_normal((8, 3, 32, 32)).astype(np.float32) * 3)
    value = _gauge(server.metrics_url, "dino_embedding_drift_mmd2")
    assert value is not None and value > reference.threshold  # noise images are far from the digits
    assert _gauge(server.metrics_url, "dino_embedding_drift_threshold") == pytest.approx(reference.threshold)
    assert _gauge(server.metrics_url, "dino_embedding_drift_monitor_up") == 1


def test_image_bytes_feed_the_same_gauges(tiny_export, tiny_onnx: Path, cpu_repository: Path, start_server,
                                          digits_root: Path) -> None:
    """The image entry point's embeddings go through the same drift step: digits stay below the threshold."""
    reference = DriftReference.load(drift_path(tiny_onnx))
    server = start_server(cpu_repository)
    client = EmbeddingClient(server.grpc_url, "dino")
    files = sorted((digits_root / "val").rglob("*.png"))[: 4 * reference.window]
    for start in range(0, len(files), 16):
        client.infer_encoded([p.read_bytes() for p in files[start:start + 16]])
    value = _gauge(server.metrics_url, "dino_embedding_drift_mmd2")
    assert value is not None and value < reference.threshold  # held-out digits: the training distribution
    assert _gauge(server.metrics_url, "dino_embedding_drift_monitor_up") == 1


def test_an_invalid_reference_serves_with_the_monitor_reported_down(tiny_export, tiny_onnx: Path,
                                                                     cpu_repository: Path, start_server) -> None:
    """A NaN bandwidth made every MMD^2 NaN, read as "no drift": now the model serves and says the monitor is down."""
    reference = DriftReference.load(drift_path(tiny_onnx))
    stored = cpu_repository / "dino" / "1" / "drift.npz"
    with np.load(stored) as data:
        arrays = {k: data[k] for k in data.files}
    with stored.open("wb") as fh:
        np.savez(fh, **(arrays | {"bandwidth": np.float64("nan")}))
    server = start_server(cpu_repository)
    client = EmbeddingClient(server.grpc_url, "dino")
    for _ in range(-(-reference.window // 8)):
        assert client.infer(np.zeros((8, 3, 32, 32), np.float32))["embedding"].shape[0] == 8  # still served
    assert _gauge(server.metrics_url, "dino_embedding_drift_monitor_up") == 0
    assert _gauge(server.metrics_url, "dino_embedding_drift_mmd2") is None
    assert "drift.npz is invalid: bandwidth=nan must be a finite number > 0" in server.log_tail(400)


def test_a_rollout_hands_the_gauges_to_the_new_version(tiny_export, tiny_onnx: Path, cpu_repository: Path,
                                                       start_server) -> None:
    reference = DriftReference.load(drift_path(tiny_onnx))
    server = start_server(cpu_repository)
    client = EmbeddingClient(server.grpc_url, "dino")
    batch = np.zeros((8, 3, 32, 32), np.float32)

    def serve_a_window() -> None:
        for _ in range(-(-reference.window // 8)):
            client.infer(batch)

    serve_a_window()
    assert _gauge(server.metrics_url, "dino_embedding_drift_mmd2", "1") is not None
    deploy(tiny_onnx, cpu_repository, url=server.grpc_url)  # loads 2 beside 1, smoke-tests, unloads 1
    assert ready_versions(EmbeddingClient(server.grpc_url, headers=server.admin_headers)) == [2]
    # the step asks which version serves at its next update (every 64 embeddings), then reads version 2's
    # reference, drops version 1's gauges and publishes version 2's
    deadline = time.monotonic() + 60
    while _gauge(server.metrics_url, "dino_embedding_drift_mmd2", "2") is None:
        assert time.monotonic() < deadline, "the drift step did not follow version 2 within a minute of traffic"
        serve_a_window()
    assert _gauge(server.metrics_url, "dino_embedding_drift_mmd2", "1") is None
    assert _gauge(server.metrics_url, "dino_embedding_drift_monitor_up", "1") is None
    assert _gauge(server.metrics_url, "dino_embedding_drift_monitor_up", "2") == 1
