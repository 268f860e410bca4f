"""Serving fixtures: real tritonservers on the session's exported model, shared by a session or a module.

The trained and exported model comes from tests/fixtures/export.py, `cpu` repositories and servers from
tests/fixtures/triton.py (`start_server`, `triton_tools`, `cpu_repository`).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_onnx: Path, triton_tools) -> Iterator:
    """A read-only `cpu` repository of the tiny model on a real tritonserver, shared by the session.

    Tests that change the repository (deploy) start their own server.
    """
    server = triton_tools.start(triton_tools.write_cpu_repository(tiny_onnx, tmp_path_factory.mktemp("served-repo")))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_onnx: Path, triton_tools) -> Iterator:
    """(server, repository): a `cpu` repository holding version 1, on its own tritonserver (one per test module)."""
    repository = triton_tools.write_cpu_repository(tiny_onnx, tmp_path_factory.mktemp("live-repo"))
    server = triton_tools.start(repository)
    try:
        yield server, repository
    finally:
        server.stop()


@pytest.fixture
def digits_subset(tmp_path: Path, digits_root: Path) -> Callable[[int], Path]:
    """digits_subset(n) -> a class folder of the first n val images of each of the ten digits."""

    def copy(per_class: int) -> Path:
        root = tmp_path / "val"
        for class_dir in sorted((digits_root / "val").iterdir()):
            (root / class_dir.name).mkdir(parents=True)
            for image in sorted(class_dir.glob("*.png"))[:per_class]:
                shutil.copy(image, root / class_dir.name / image.name)
        return root

    return copy
