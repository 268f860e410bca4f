"""A server that accepts the connection and never answers is an error within the client's deadline, not a hang."""

from __future__ import annotations

import threading
from concurrent import futures

import grpc
import pytest

from dino_model.errors import ServingError
from dino_model.serving.client import EmbeddingClient


class _Silent(grpc.GenericRpcHandler):
    """Takes every call and answers none until released."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def service(self, handler_call_details):
        def never(request, context):
            self.release.wait(30)
            return b""

        return grpc.unary_unary_rpc_method_handler(never)


@pytest.fixture
def silent_url():
    handler = _Silent()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    handler.release.set()
    server.stop(0)


@pytest.mark.parametrize("call", ["is_server_live", "get_model_repository_index"])
def test_every_call_has_a_deadline(silent_url: str, call: str) -> None:
    client = EmbeddingClient(silent_url, timeout_s=0.5, headers={"triton-grpc-protocol-admin-key": "k"})
    with pytest.raises(ServingError, match=r"did not answer within 0\.5 s"):
        client.call(f"calling {call}", getattr(client.raw, call))


def test_a_given_deadline_wins(silent_url: str) -> None:
    client = EmbeddingClient(silent_url, timeout_s=30)
    with pytest.raises(ServingError, match=r"did not answer within 0\.3 s"):
        client.call("reach", client.raw.is_server_live, client_timeout=0.3)
