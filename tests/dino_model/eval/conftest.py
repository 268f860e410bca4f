"""Fixtures of the evaluation tests: a generated DAVIS sequence and tiny-model checkpoints."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch


def _require_shared(sub: str) -> Path:
    """tests/conftest.py's require_shared, loaded by path (test folders are not packages)."""
    path = Path(__file__).resolve().parents[2] / "conftest.py"
    spec = importlib.util.spec_from_file_location("dino_root_conftest", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.require_shared(sub)


@pytest.fixture(scope="session")
def davis2016() -> Path:
    """../shared/datasets/davis2016_subset: skipped when absent, failed when DINO_REQUIRE_SHARED_DATA=1."""
    return _require_shared("davis2016_subset")


@pytest.fixture(scope="session")
def synthetic_davis(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DAVIS root holding the generated two-object sequence (16 frames of 64 x 96 px)."""
    from dino_model.eval.davis.synthetic import make_synthetic_davis

    return make_synthetic_davis(tmp_path_factory.mktemp("davis"))


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny ViT (patch 4, width 64, depth 2) saved in this project's format."""
    from dino_model.config import load_config
    from dino_model.models.backbone import build_backbone

    cfg = load_config("tiny")
    torch.manual_seed(0)
    backbone, _ = build_backbone(cfg.model, drop_path_rate=0.0)
    path = tmp_path_factory.mktemp("random") / "checkpoint.pth"
    torch.save({"config": cfg.to_dict(), "teacher": backbone.state_dict()}, path)
    return path
