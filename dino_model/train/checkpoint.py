"""Training checkpoints, written atomically so a killed run never leaves a half-written file.

A checkpoint holds only tensors and plain Python values (the config as a dict), so it loads with
`torch.load(weights_only=True)`. `epoch` is the next epoch to run, as in the official code.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from dino_model.errors import CheckpointError

logger = logging.getLogger(__name__)

LATEST = "checkpoint.pth"


def save_atomic(state: dict[str, Any], path: str | Path) -> Path:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint (ours, or an official DINO one); CheckpointError if missing or unreadable.

    Only tensors and plain values are unpickled; the official files' `argparse.Namespace` is
    allow-listed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc})") from exc


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    path = Path(output_dir) / LATEST
    return path if path.is_file() else None
