"""Export fixtures: the session's small trained model, its checkpoint and its exported files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tiny_model import exported_model, trained_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, digits_root: Path) -> Path:
    return trained_checkpoint(tmp_path_factory.getbasetemp(), digits_root)


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory: pytest.TempPathFactory, digits_root: Path) -> dict[str, Any]:
    """The export report; details.files.{fp32,fp16}.path are the ONNX files."""
    return exported_model(tmp_path_factory.getbasetemp(), digits_root)


@pytest.fixture(scope="session")
def tiny_onnx(tiny_export: dict[str, Any]) -> Path:
    return Path(tiny_export["details"]["files"]["fp32"]["path"])
