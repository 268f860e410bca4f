"""Capture on the image entry point (`dino_images`) of a real tritonserver, switched by the server's environment.

Off by default: a server that knows a store but was not told to capture writes nothing there. On: the
images sent as bytes land in the store as sent, with the version of `dino` that answered them, and,
once the drift step has completed a window, that window's drift score (mmd2 / threshold, as the
server's gauges say). A store that stops working loses captures, never requests.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from dino_model.capture import CaptureStore
from dino_model.monitoring.drift import DriftReference, drift_path
from dino_model.serving.client import EmbeddingClient

pytestmark = pytest.mark.triton


@pytest.fixture(scope="module")
def images(digits_root: Path) -> list[bytes]:
    """Eight distinct PNG-encoded digits (distinct bytes: the store de-duplicates by content hash)."""
    found = []
    for source in sorted((digits_root / "val").rglob("*.png"))[:8]:
        buffer = io.BytesIO()
        Image.open(source).convert("RGB").resize((40, 40)).save(buffer, "PNG")
        found.append(buffer.getvalue())
    assert len(set(found)) == 8
    return found


def _server(tmp_path: Path, tiny_onnx: Path, triton_tools, env: dict[str, str]) -> Iterator:
    repository = triton_tools.write_cpu_repository(tiny_onnx, tmp_path / "repo")
    with pytest.MonkeyPatch.context() as patch:  # the server inherits this process's environment
        for name in [n for n in os.environ if n.startswith("DINO_CAPTURE_")]:
            patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        server = triton_tools.start(repository)
    try:
        yield server
    finally:
        server.stop()


def _wait_for(store: CaptureStore, count: int, timeout_s: float = 30.0) -> list:
    deadline = time.monotonic() + timeout_s
    while True:
        records = list(store.iter_records())
        if len(records) >= count or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def test_capture_is_off_by_default(tmp_path: Path, tiny_onnx: Path, triton_tools, images: list[bytes]) -> None:
    store = tmp_path / "store"
    servers = _server(tmp_path, tiny_onnx, triton_tools, {"DINO_CAPTURE_STORE": str(store), "DINO_CAPTURE_RATE": "1"})
    server = next(servers)
    try:
        answer = EmbeddingClient(server.grpc_url).infer_encoded(images)["embedding"]
        assert answer.shape[0] == len(images)
    finally:
        next(servers, None)  # stops the server: the steps' finalize writes whatever was queued
    assert not store.exists() or not any(store.iterdir())


def test_captured_images_land_in_the_store_with_the_served_version_and_a_broken_store_fails_no_request(
        tmp_path: Path, tiny_onnx: Path, triton_tools, images: list[bytes]) -> None:
    store_dir = tmp_path / "store"
    servers = _server(tmp_path, tiny_onnx, triton_tools, {"DINO_CAPTURE_ENABLED": "1",
                                                          "DINO_CAPTURE_STORE": str(store_dir),
                                                          "DINO_CAPTURE_RATE": "1"})
    server = next(servers)
    try:
        client = EmbeddingClient(server.grpc_url)
        client.infer_encoded(images[:4])
        client.infer_encoded(images[4:])
        records = _wait_for(CaptureStore(store_dir), len(images))
        store = CaptureStore(store_dir)
        assert sorted(r.sha256 for r in records) == sorted(hashlib.sha256(b).hexdigest() for b in images)
        assert {r.model_version for r in records} == {"1"}  # the version of `dino` that answered
        assert {r.drift_score for r in records} == {None}  # 8 images: the drift step has no full window yet
        assert {store.image_bytes(r) for r in records} == set(images)  # the bytes as sent

        # the store breaks: a file where its folder was; requests are still answered
        shutil.rmtree(store_dir)
        store_dir.write_text("not a folder")
        fresh = [image + b"\0" * (i + 1) for i, image in enumerate(images)]  # new hashes, still readable PNGs
        for _ in range(3):
            assert client.infer_encoded(fresh)["embedding"].shape[0] == len(fresh)
        time.sleep(1.0)
        assert "could not store an image" in server.log_tail(200)
    finally:
        next(servers, None)


def _png(source: Path) -> bytes:
    buffer = io.BytesIO()
    Image.open(source).convert("RGB").resize((40, 40)).save(buffer, "PNG")
    return buffer.getvalue()


def _gauge(metrics_url: str, name: str, version: str = "1") -> float | None:
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    labels = rf'\{{(?=[^}}]*model="dino")(?=[^}}]*version="{version}")[^}}]*\}}'
    found = re.search(rf"^{name}{labels} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


def test_captured_images_carry_the_drift_score_of_the_latest_window(tmp_path: Path, tiny_onnx: Path, triton_tools,
                                                                    digits_root: Path) -> None:
    """Before the first full window the score is null; after it, the window's mmd2 / threshold of /metrics."""
    window = DriftReference.load(drift_path(tiny_onnx)).window
    files = sorted((digits_root / "val").rglob("*.png"))[:window + 8]
    first, later = [_png(p) for p in files[:window]], [_png(p) for p in files[window:]]
    assert len(set(first + later)) == window + 8
    store_dir = tmp_path / "store"
    servers = _server(tmp_path, tiny_onnx, triton_tools, {"DINO_CAPTURE_ENABLED": "1",
                                                          "DINO_CAPTURE_STORE": str(store_dir),
                                                          "DINO_CAPTURE_RATE": "1"})
    server = next(servers)
    try:
        client = EmbeddingClient(server.grpc_url)
        for start in range(0, window, 16):  # exactly one full window: the drift step computes its first value
            client.infer_encoded(first[start:start + 16])
        mmd2 = _gauge(server.metrics_url, "dino_embedding_drift_mmd2")
        threshold = _gauge(server.metrics_url, "dino_embedding_drift_threshold")
        assert mmd2 is not None and threshold
        time.sleep(1.5)  # the capture step looks at the shared window at most once a second
        client.infer_encoded(later)  # 8 more: fewer than an update's worth, the window's score stays
        records = {r.sha256: r for r in _wait_for(CaptureStore(store_dir), window + 8)}
    finally:
        next(servers, None)
    scores = [records[hashlib.sha256(b).hexdigest()].drift_score for b in first]
    assert scores == [None] * window  # offered before the drift step had seen them
    for image in later:
        record = records[hashlib.sha256(image).hexdigest()]
        assert record.model_version == "1"
        assert record.drift_score == pytest.approx(mmd2 / threshold, rel=1e-6)
