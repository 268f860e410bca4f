"""Bounded load on a served model: N concurrent gRPC clients for a fixed time, errors counted.

Each client sends the same seeded batch in a closed loop (a new request as soon as the previous
answer arrives), so offered load scales with the number of clients, like perf_analyzer's
`--concurrency-range`. The generator also runs in the background, which is
how the rollout test keeps clients busy while a new version goes live.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dino_model.errors import ServingError
from dino_model.export.contract import INPUT_NAME
from dino_model.serving.client import EmbeddingClient
from dino_model.triton.config import DEFAULT_MODEL_NAME

logger = logging.getLogger(__name__)


@dataclass
class LoadReport:
    clients: int
    batch_size: int
    seconds: float = 0.0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    error_samples: list[str] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)  # answering model version -> requests

    @property
    def requests(self) -> int:
        return len(self.latencies_ms) + self.errors

    @property
    def images_per_s(self) -> float:
        return len(self.latencies_ms) * self.batch_size / self.seconds if self.seconds else 0.0

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"clients": self.clients, "batch_size": self.batch_size, "seconds": round(self.seconds, 2),
                "requests": self.requests, "errors": self.errors, "images_per_s": round(self.images_per_s, 1),
                "p50_ms": round(self.percentile_ms(50), 2), "p99_ms": round(self.percentile_ms(99), 2),
                "versions": self.versions, "error_samples": self.error_samples}


class LoadGenerator:
    """Background closed-loop clients; `stop()` returns the report. Also a context manager."""

    def __init__(self, url: str, model_name: str = DEFAULT_MODEL_NAME, *, clients: int = 4, batch_size: int = 1,
                 model_version: str = "", seed: int = 0) -> None:
        self.url, self.model_name, self.model_version = url, model_name, model_version
        self.report = LoadReport(clients=clients, batch_size=batch_size)
        self.seed = seed
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._started = 0.0

    def start(self) -> LoadGenerator:
        probe = EmbeddingClient(self.url, self.model_name, model_version=self.model_version)
        shape = probe.served.contract.input_shape  # fails fast, before any thread starts
        images = np.random.default_rng(self.seed).standard_normal((self.report.batch_size, *shape), np.float32)
        self._started = time.perf_counter()
        for i in range(self.report.clients):
            thread = threading.Thread(target=self._run, args=(images,), name=f"load-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> LoadReport:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self.report.seconds = time.perf_counter() - self._started
        logger.info("load: %s", self.report.to_dict())
        return self.report

    def __enter__(self) -> LoadGenerator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self, images: np.ndarray) -> None:
        client = EmbeddingClient(self.url, self.model_name, model_version=self.model_version)
        request = _input(images)
        while not self._stop.is_set():
            start = time.perf_counter()
            try:
                result = client.call("inference", client.raw.infer, self.model_name, [request],
                                     model_version=self.model_version, client_timeout=client.timeout_s)
            except ServingError as exc:
                with self._lock:
                    self.report.errors += 1
                    if len(self.report.error_samples) < 5:
                        self.report.error_samples.append(str(exc))
                continue
            elapsed = (time.perf_counter() - start) * 1e3
            version = result.get_response().model_version
            with self._lock:
                self.report.latencies_ms.append(elapsed)
                self.report.versions[version] = self.report.versions.get(version, 0) + 1


def _input(images: np.ndarray):
    import tritonclient.grpc as grpcclient

    request = grpcclient.InferInput(INPUT_NAME, list(images.shape), "FP32")
    request.set_data_from_numpy(images)
    return request


def run_load_test(url: str, model_name: str = DEFAULT_MODEL_NAME, *, clients: int = 4, duration_s: float = 10.0,
                  batch_size: int = 1, model_version: str = "") -> LoadReport:
    """Run `clients` closed-loop clients for `duration_s` seconds; the report has errors and latencies."""
    with LoadGenerator(url, model_name, clients=clients, batch_size=batch_size, model_version=model_version) as gen:
        time.sleep(duration_s)
    return gen.report
