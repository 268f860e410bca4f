"""Shared fixtures: tiny configuration, materialised digits, seeds, free ports, shared data sets, and the
plugins in tests/fixtures/ (the exported tiny model, git + DVC repositories, tritonservers)."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# fixtures several folders share (tests/fixtures/, importable through pyproject's pytest pythonpath);
# pytest reads pytest_plugins from the root conftest only
pytest_plugins = ["fixtures.export", "fixtures.versioning", "fixtures.triton", "fixtures.kfp_api", "fixtures.s3"]


def shared_datasets_dir() -> Path:
    """../shared/datasets beside the checkout, or DINO_SHARED_DATASETS."""
    return Path(os.environ.get("DINO_SHARED_DATASETS", REPO_ROOT.parent / "shared" / "datasets"))


def require_shared(sub: str) -> Path:
    """The path of a shared data set; skip (or fail when DINO_REQUIRE_SHARED_DATA=1) if absent."""
    path = shared_datasets_dir() / sub
    if not path.exists():
        message = f"shared data set {path} is absent (set DINO_SHARED_DATASETS to its folder)"
        if os.environ.get("DINO_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session", autouse=True)
def _lineage_keys_of_the_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The session's own config dir: the export generates its lineage signing key there, not in ~/.config.

    Set in os.environ (not monkeypatch) so that the `dino-mlops` subprocesses of the tests see it too; a
    signing key or trusted public keys of the outer environment are set aside for the session.
    """
    from dino_model.export.signing import CONFIG_HOME_ENV, PUBLIC_KEYS_ENV, SIGNING_KEY_ENV

    saved = {k: os.environ.pop(k, None) for k in (CONFIG_HOME_ENV, PUBLIC_KEYS_ENV, SIGNING_KEY_ENV)}
    home = tmp_path_factory.getbasetemp() / "config-home"
    home.mkdir(exist_ok=True)
    os.environ[CONFIG_HOME_ENV] = str(home)
    yield home
    for key, value in saved.items():
        os.environ.pop(key, None)
        if value is not None:
            os.environ[key] = value


@pytest.fixture(autouse=True)
def _seed() -> None:
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _cpu_without_bf16_units() -> Iterator[None]:
    """train.precision=auto resolves as on a CPU without bf16 units (fp32), in subprocesses and in
    module- and session-scoped fixtures too, so the suite's training arithmetic does not depend on the
    CPU it runs on; tests/dino_model/train/test_precision.py checks both kinds of CPU."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DINO_CPU_BF16", "0")
        yield


@pytest.fixture
def free_port() -> int:
    """A loopback port that was free a moment ago (dino_model.runtime.processes.free_ports for several)."""
    from dino_model.runtime.processes import free_ports

    return free_ports(1)[0]


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-learn's digits materialised once as image folders with train/val splits."""
    from dino_model.data.materialize import materialize

    root = tmp_path_factory.mktemp("digits")
    materialize("digits", root)
    return root


@pytest.fixture
def tiny_cfg(tmp_path: Path, digits_root: Path):
    """The packaged tiny config on the digits set, writing into tmp_path."""
    from dino_model.config import load_config

    return load_config(
        "tiny",
        overrides=[
            f"data.root={digits_root / 'train'}",
            f"data.knn_train={digits_root / 'train'}",
            f"data.knn_val={digits_root / 'val'}",
            f"train.output_dir={tmp_path / 'run'}",
        ],
    )


@pytest.fixture
def run_cli() -> Iterator[Callable[[list[str]], int]]:
    """dino_model.cli.main.main, with the root logger's handlers restored afterwards.

    The CLI installs a handler on the stderr of the moment, which pytest's capture closes after the test.
    """
    from dino_model.cli.main import main

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield main
    root.handlers[:] = handlers
    root.setLevel(level)
