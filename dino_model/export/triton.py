"""A standard Triton model repository on disk: `<repo>/<model>/config.pbtxt` and integer version folders.

Each version folder holds the self-contained `model.onnx` (and, for the `cpu` flavour, the Python
backend's `model.py`). Folders are written under a hidden name and renamed into place, so a server
never sees half a version (Triton ignores names that are not positive integers; MLOPS_REFERENCE
§2.1). The config's parameters carry the contract and the lineage of the model being written.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from dino_model.errors import ConfigError
from dino_model.export.contract import ModelContract
from dino_model.export.lineage import file_sha256
from dino_model.export.onnx import read_contract
from dino_model.export.triton_config import RepositoryOptions, build_model_config, config_to_text, parse_config_text

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.pbtxt"
ONNX_FILE = "model.onnx"
PYTHON_MODEL = Path(__file__).parent / "python_backend" / "model.py"


def version_folders(model_dir: str | Path) -> list[int]:
    """The version numbers present in a model folder, ascending (Triton's rule: positive integers)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and p.name[0] != "0")


def next_version(model_dir: str | Path) -> int:
    return max(version_folders(model_dir), default=0) + 1


def write_version(onnx_path: str | Path, model_dir: str | Path, version: int, *, flavour: str) -> Path:
    """Copy the model files into `<model_dir>/<version>/`, atomically; refuses to overwrite."""
    model_dir, onnx_path = Path(model_dir), Path(onnx_path)
    target = model_dir / str(version)
    if version < 1:
        raise ConfigError(f"version {version} must be a positive integer")
    if target.exists():
        raise ConfigError(f"{target} already exists; versions are immutable, so omit --version to add "
                          f"version {next_version(model_dir)}")
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=model_dir))
    try:
        shutil.copyfile(onnx_path, staging / ONNX_FILE)
        if flavour == "cpu":
            shutil.copyfile(PYTHON_MODEL, staging / PYTHON_MODEL.name)
        staging.chmod(0o755)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def write_config(model_dir: str | Path, config: dict[str, Any]) -> Path:
    """Write config.pbtxt atomically (validated against Triton's schema first)."""
    path = Path(model_dir) / CONFIG_FILE
    text = config_to_text(config)
    fd, tmp = tempfile.mkstemp(prefix=f".{CONFIG_FILE}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    Path(tmp).chmod(0o644)
    Path(tmp).replace(path)
    return path


def read_config(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{path} does not exist; write the repository with `dino-mlops triton-repo` first")
    return parse_config_text(path.read_text(), source=str(path))


def served_contract(onnx_path: str | Path, **lineage: str) -> ModelContract:
    """The ONNX file's contract with lineage overrides and the file's sha256 added."""
    return read_contract(onnx_path).with_lineage(**lineage, onnx_sha256=file_sha256(onnx_path))


def write_model_repository(onnx_path: str | Path, repository: str | Path, opts: RepositoryOptions, *,
                           version: int | None = None, lineage: dict[str, str] | None = None) -> dict[str, Any]:
    """Add a version of the exported model to a repository and (re)write its config.pbtxt.

    Args:
        onnx_path: the file written by `dino-mlops export` (its metadata carries the contract).
        repository: the model repository root; created when missing.
        opts: flavour, batching, instances, accelerator, warm-up and version policy.
        version: the version folder to write (default: one above the highest present).
        lineage: overrides of the recorded lineage (data_version, code_revision, metrics JSON).

    Returns:
        {"repository", "model", "version", "flavour", "config"} with paths as strings.
    """
    onnx_path = Path(onnx_path)
    contract = served_contract(onnx_path, **(lineage or {}))
    if opts.flavour == "gpu" and contract.precision == "fp16":
        logger.info("%s computes in fp16 inside; inputs and outputs stay FP32", onnx_path)
    config = build_model_config(contract, opts)
    model_dir = Path(repository) / opts.model_name
    version = version or next_version(model_dir)
    version_dir = write_version(onnx_path, model_dir, version, flavour=opts.flavour)
    config_path = write_config(model_dir, config)
    logger.info("wrote %s version %d (%s flavour) under %s", opts.model_name, version, opts.flavour, repository)
    return {"repository": str(repository), "model": opts.model_name, "version": version, "flavour": opts.flavour,
            "config": str(config_path), "version_dir": str(version_dir)}

