"""Serving fixtures: the session's exported model, `cpu` repositories, and real tritonservers.

The trained and exported model comes from tests/dino_model/export/conftest.py (loaded by path: test
folders are not packages under --import-mode=importlib), so both folders share one training run.
Without nvidia-pytriton the Triton tests skip, unless DINO_REQUIRE_TRITON=1 (CI), where they fail.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest


def _export_fixtures():
    path = Path(__file__).resolve().parents[1] / "export" / "conftest.py"
    spec = importlib.util.spec_from_file_location("dino_export_fixtures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_export = _export_fixtures()
tiny_checkpoint = _export.tiny_checkpoint
tiny_export = _export.tiny_export
tiny_onnx = _export.tiny_onnx
tiny_onnx_fp16 = _export.tiny_onnx_fp16
forge = _export.forge
exported_copy = _export.exported_copy


def require_triton() -> None:
    """Skip (or fail when DINO_REQUIRE_TRITON=1) without the tritonserver that nvidia-pytriton ships."""
    if importlib.util.find_spec("pytriton") is None:
        message = "nvidia-pytriton (which ships tritonserver) is not installed"
        if os.environ.get("DINO_REQUIRE_TRITON") == "1":
            pytest.fail(message)
        pytest.skip(message)


def write_cpu_repository(onnx_path: Path, root: Path) -> Path:
    from dino_model.export.triton_config import RepositoryOptions
    from dino_model.export.triton_repository import write_model_repository

    write_model_repository(onnx_path, root, RepositoryOptions(flavour="cpu", max_batch_size=16,
                                                              preferred_batch_sizes=[]))
    return root


def start_triton(repository: Path, **options):
    """A started TritonServer on free loopback ports (the caller stops it); options go to TritonServer."""
    from dino_model.runtime.processes import free_ports
    from dino_model.serving.server import TritonServer

    require_triton()
    http, grpc, metrics = free_ports(3)
    return TritonServer(repository, http_port=http, grpc_port=grpc, metrics_port=metrics, **options).start()


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_onnx: Path) -> Iterator:
    """A read-only `cpu` repository of the tiny model on a real tritonserver, shared by the session.

    Tests that change the repository (deploy) start their own server.
    """
    server = start_triton(write_cpu_repository(tiny_onnx, tmp_path_factory.mktemp("served-repo")))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def cpu_repository(tmp_path: Path, tiny_onnx: Path) -> Path:
    return write_cpu_repository(tiny_onnx, tmp_path / "repo")


@pytest.fixture
def start_server() -> Iterator[Callable]:
    """start_server(repository, **options) -> a started TritonServer, stopped at the end of the test."""
    started = []

    def start(repository: Path, **options):
        started.append(start_triton(repository, **options))
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def triton_tools() -> SimpleNamespace:
    """start(repository) and write_cpu_repository(onnx, root), for fixtures that manage their own server."""
    return SimpleNamespace(start=start_triton, write_cpu_repository=write_cpu_repository)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_onnx: Path, triton_tools) -> Iterator:
    """(server, repository): a `cpu` repository holding version 1, on its own tritonserver (one per test module)."""
    repository = triton_tools.write_cpu_repository(tiny_onnx, tmp_path_factory.mktemp("live-repo"))
    server = triton_tools.start(repository)
    try:
        yield server, repository
    finally:
        server.stop()
