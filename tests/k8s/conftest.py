"""Fixtures for the Kubernetes manifest tests: each kustomization is rendered once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# the helper modules beside this file (k8s_render, k8s_schema, k8s_policy); tests run in importlib mode
sys.path.insert(0, str(Path(__file__).parent))

from k8s_render import TARGETS, Resource, render  # noqa: E402


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[Resource]]:
    """Rendered resources per target: dev, prod-gpu, dev/pretrain, prod-gpu/pretrain."""
    return {name: render(path) for name, path in TARGETS.items()}
