"""gRPC client of the served embedding model, with the contract read from the server and typed errors.

Requests are checked against the served contract before they leave (dtype, shape, finite values),
so a caller's mistake is named locally; whatever the server still rejects comes back as a ServingError
quoting Triton's message, and the server stays up. Answers holding NaN or infinite values are refused
too: a model fed pixels far out of range, or a broken model, produces them, and servers that do not
check (Triton's onnxruntime backend) return them without an error. The admin key (`headers`) travels
only with calls to Triton's restricted APIs (repository, shared memory, trace, logging), never with
inference. One tritonclient connection per thread, since batches are sent concurrently
(gRPC urls are host:port, without a scheme).

Where the repository holds the entry points of dino_model/triton/ensemble.py, unpinned requests go
through `<model>_monitored` (the same model with the drift step after it, so the traffic shows in
the drift gauges) and encoded images through `<model>_images` (`infer_encoded`: preprocessing on the
server); requests pinned to a version always go to the model itself (the ensembles serve its latest).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from dino_model.errors import ConfigError, ServingError
from dino_model.export.contract import EMBEDDING, INPUT_NAME, ModelContract
from dino_model.triton.config import DEFAULT_MODEL_NAME, config_parameters
from dino_model.triton.ensemble import BYTES_INPUT, EntryPoints

logger = logging.getLogger(__name__)

LOAD_TIMEOUT_S = 600.0  # deadline of a model load: the server reads, checks and warms the model up
HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002  # Triton's own defaults, used by every server started here
DEFAULT_URL = f"localhost:{GRPC_PORT}"

# tritonclient.grpc methods in the API groups servers restrict to the admin key (server.RESTRICTED_APIS)
RESTRICTED_CALLS = frozenset({
    "get_model_repository_index", "load_model", "unload_model",
    "get_system_shared_memory_status", "register_system_shared_memory", "unregister_system_shared_memory",
    "get_cuda_shared_memory_status", "register_cuda_shared_memory", "unregister_cuda_shared_memory",
    "get_trace_settings", "update_trace_settings", "get_log_settings", "update_log_settings",
})


@dataclass(frozen=True)
class ServedModel:
    name: str
    max_batch_size: int
    contract: ModelContract
    config: dict
    monitored: str = ""  # the drift-monitored entry point of the same model, "" when the server has none


class EmbeddingClient:
    """Embeddings from a Triton model over gRPC.

    Args:
        url: `host:port` of Triton's gRPC endpoint.
        model_name: the model to query.
        model_version: "" lets Triton pick its latest ready version (what clients should normally do).
        timeout_s: per-request deadline.
        headers: gRPC metadata sent with calls to the restricted APIs (RESTRICTED_CALLS) made through
            `call`, e.g. {"triton-grpc-protocol-admin-key": key} for a server started with
            --grpc-restricted-protocol=model-repository:admin-key=<key> (Triton expects gRPC header
            names with the `triton-grpc-protocol-` prefix); admin_key.admin_headers(key) builds it.
        replicas: `host:port` of every server sharing one model repository (see replica_urls); each
            call is then made on all of them in turn, and the first one's answer is returned.
    """

    def __init__(self, url: str = DEFAULT_URL, model_name: str = DEFAULT_MODEL_NAME, *, model_version: str = "",
                 timeout_s: float = 60.0, headers: dict[str, str] | None = None, replicas: Sequence[str] = ()) -> None:
        for address in (url, *replicas):
            if "://" in address:
                raise ConfigError(f"gRPC url {address!r} must be host:port without a scheme, e.g. localhost:8001")
        self.url, self.model_name, self.model_version, self.timeout_s = url, model_name, model_version, timeout_s
        self.headers = headers
        self.replicas = tuple(replicas)
        self._local = threading.local()

    @property
    def raw(self):
        """This thread's tritonclient.grpc.InferenceServerClient (one per replica behind a Replicas)."""
        if getattr(self._local, "client", None) is None:
            import tritonclient.grpc as grpcclient

            clients = [grpcclient.InferenceServerClient(url=url) for url in self.replicas or (self.url,)]
            self._local.client = clients[0] if len(clients) == 1 else Replicas(clients)
        return self._local.client

    def call(self, what: str, fn, *args, **kwargs):
        """Run a tritonclient call; errors become ServingErrors saying what and where.

        This client's headers go with the calls in RESTRICTED_CALLS only. Every call has a deadline
        (timeout_s; LOAD_TIMEOUT_S for loading a model), so a server that stops answering is an error
        rather than a client that waits forever.
        """
        from tritonclient.utils import InferenceServerException

        name = getattr(fn, "__name__", "")
        if self.headers and name in RESTRICTED_CALLS:
            kwargs.setdefault("headers", self.headers)
        kwargs.setdefault("client_timeout", LOAD_TIMEOUT_S if name == "load_model" else self.timeout_s)
        try:
            return fn(*args, **kwargs)
        except InferenceServerException as exc:
            status, message = str(exc.status() or ""), str(exc.message())
            if "DEADLINE_EXCEEDED" in status or "Deadline Exceeded" in message:
                raise ServingError(f"{what}: Triton at {self.url} did not answer within "
                                   f"{kwargs['client_timeout']:g} s") from None
            if "restricted" in message:
                raise ServingError(f"{what} was refused by Triton at {self.url}: {message} (send the admin key: "
                                   "`dino-mlops deploy` reads it from --admin-key-file, $TRITON_ADMIN_KEY or "
                                   "<repository>.admin-key)") from None
            if "UNAVAILABLE" in status:
                raise ServingError(f"cannot reach Triton at {self.url} over gRPC ({exc.message()}); start it with "
                                   "`dino-mlops serve` or pass the right --url host:port") from None
            raise ServingError(f"{what} failed on Triton at {self.url}: {exc.message()}") from None

    @cached_property
    def served(self) -> ServedModel:
        """The served model's configuration and contract (read once)."""
        self.call("reach", self.raw.is_server_live, client_timeout=self.timeout_s)
        version = self.model_version
        config = self.call(f"reading the config of model {self.model_name!r}", self.raw.get_model_config,
                           self.model_name, model_version=version, as_json=True, client_timeout=self.timeout_s)
        config = config.get("config", config)
        contract = ModelContract.from_properties(config_parameters(config),
                                                 source=f"model {self.model_name!r} at {self.url}")
        monitored = EntryPoints(self.model_name).monitored
        ready = self.call("reading readiness", self.raw.is_model_ready, monitored, client_timeout=self.timeout_s)
        return ServedModel(self.model_name, int(config.get("max_batch_size", 0)), contract, config,
                           monitored if ready else "")

    @cached_property
    def images_entry_point(self) -> str:
        """The name of the served model's image entry point; ServingError when the server has none (checked once)."""
        target = EntryPoints(self.model_name).images
        if not self.call("reading readiness", self.raw.is_model_ready, target, client_timeout=self.timeout_s):
            raise ServingError(f"Triton at {self.url} serves no image entry point {target!r} (write the repository "
                               "again with `dino-mlops triton-repo`, which adds it, or preprocess here)")
        return target

    def check_images(self, images: np.ndarray) -> None:
        """ServingError unless `images` is finite FP32 (B, 3, S, S) with 1 <= B <= max_batch_size."""
        served = self.served
        shape = served.contract.input_shape
        if not isinstance(images, np.ndarray) or images.dtype != np.float32:
            dtype = getattr(images, "dtype", type(images).__name__)
            raise ServingError(f"images have dtype {dtype}; model {self.model_name!r} takes float32 arrays "
                               f"(use .astype(np.float32))")
        if images.ndim != 4 or tuple(images.shape[1:]) != shape:
            raise ServingError(f"images have shape {list(images.shape)}; model {self.model_name!r} takes "
                               f"[B, {', '.join(map(str, shape))}] (preprocess with its contract)")
        if not 1 <= len(images) <= served.max_batch_size:
            raise ServingError(f"batch of {len(images)} images; model {self.model_name!r} takes 1 to "
                               f"{served.max_batch_size} per request")
        bad = int(np.count_nonzero(~np.isfinite(images)))
        if bad:
            raise ServingError(f"images hold {bad} NaN or infinite values; model {self.model_name!r} takes finite, "
                               "normalised pixels")

    def infer(self, images: np.ndarray, *, outputs: Sequence[str] = (EMBEDDING,), model_version: str | None = None
              ) -> dict[str, np.ndarray]:
        """One request: {output name: array} for a batch of preprocessed images."""
        import tritonclient.grpc as grpcclient

        self.check_images(images)
        request = grpcclient.InferInput(INPUT_NAME, list(images.shape), "FP32")
        request.set_data_from_numpy(images)
        wanted = [grpcclient.InferRequestedOutput(name) for name in outputs]
        version = self.model_version if model_version is None else model_version
        target = self.served.monitored if not version and self.served.monitored else self.model_name
        # named by the model asked for; Triton's own message says when an ensemble carried it
        result = self.call(f"inference on model {self.model_name!r}", self.raw.infer, target, [request],
                           model_version=version, outputs=wanted, client_timeout=self.timeout_s)
        answers = {name: result.as_numpy(name) for name in outputs}
        for name, array in answers.items():
            check_finite(array, f"{name!r} of model {self.model_name!r} at {self.url}", images)
        return answers

    def infer_encoded(self, images: Sequence[bytes], *, outputs: Sequence[str] = (EMBEDDING,)
                      ) -> dict[str, np.ndarray]:
        """One request to the image entry point `<model>_images`: encoded images (JPEG, PNG, WebP ...) in,
        {output name: array} out, preprocessed on the server exactly as `infer`'s callers do here.

        Raises:
            ServingError: the server has no image entry point, the batch is empty or too large, or the
                server refused an item (its message names the item and why).
        """
        import tritonclient.grpc as grpcclient

        target = self.images_entry_point
        if not 1 <= len(images) <= self.served.max_batch_size:
            raise ServingError(f"batch of {len(images)} images; model {target!r} takes 1 to "
                               f"{self.served.max_batch_size} per request")
        request = grpcclient.InferInput(BYTES_INPUT, [len(images), 1], "BYTES")
        request.set_data_from_numpy(np.array([bytes(item) for item in images], dtype=np.object_).reshape(-1, 1))
        wanted = [grpcclient.InferRequestedOutput(name) for name in outputs]
        result = self.call(f"inference on model {target!r}", self.raw.infer, target, [request], outputs=wanted,
                           client_timeout=self.timeout_s)
        answers = {name: result.as_numpy(name) for name in outputs}
        for name, array in answers.items():
            check_finite(array, f"{name!r} of model {target!r} at {self.url}", np.zeros(len(images)))
        return answers

    def embed(self, images: np.ndarray, *, batch_size: int = 32, concurrency: int = 4) -> np.ndarray:
        """Embeddings (N, D) of N preprocessed images, sent as concurrent batches."""
        batch_size = min(batch_size, self.served.max_batch_size)
        chunks = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            parts = list(pool.map(lambda chunk: self.infer(chunk)[EMBEDDING], chunks))
        return np.concatenate(parts) if parts else np.zeros((0, self.served.contract.embed_dim), np.float32)


class Replicas:
    """tritonclient calls made on every replica in turn: a model is loaded, or unloaded, everywhere.

    The first failure stops the round and propagates (a deploy then rolls every replica back); the
    first replica's answer is returned.
    """

    def __init__(self, clients: Sequence) -> None:
        self.clients = list(clients)

    def __getattr__(self, name: str):
        methods = [getattr(client, name) for client in self.clients]

        def on_every_replica(*args, **kwargs):
            return [method(*args, **kwargs) for method in methods][0]

        on_every_replica.__name__ = name  # EmbeddingClient.call recognises restricted calls by name
        return on_every_replica


def replica_urls(url: str) -> list[str]:
    """`host:port` for every address `url`'s host resolves to: one per ready pod behind a headless Service.

    A Kubernetes Service with a cluster IP resolves to that one address (and would reach a single
    replica), so deploys name the headless Service (k8s/base/triton/service.yaml, triton-grpc).
    """
    host, _, port = url.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"gRPC url {url!r} must be host:port, e.g. triton-grpc.dino-mlops.svc:8001")
    try:
        infos = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ServingError(f"cannot resolve Triton's host {host!r} ({exc.strerror})") from None
    addresses = sorted({info[4][0] for info in infos})
    return [f"[{a}]:{port}" if ":" in a else f"{a}:{port}" for a in addresses]


def check_finite(array: np.ndarray, what: str, images: np.ndarray) -> None:
    """ServingError when a model's answer holds NaN or infinite values (never passed on as embeddings)."""
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:
        raise ServingError(f"{what} answered {bad} non-finite values (NaN/Inf) for a batch of {len(images)} "
                           f"images with |pixel| up to {float(np.abs(images).max()):.3g}: inputs out of the "
                           "range the model handles, or a broken model")
