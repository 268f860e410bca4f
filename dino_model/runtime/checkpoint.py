"""Training checkpoints, written atomically so a killed run never leaves a half-written file.

A checkpoint holds only tensors and plain Python values (the config as a dict), so it loads with
`torch.load(weights_only=True)`. `epoch` is the next epoch to run, as in the official code.
Each file is written through runtime/atomic.py (a temporary `.<name>.XXXXXXXX` beside it, renamed over
it): a run killed mid-write leaves such a temporary behind, which the next run in that folder removes. A write that
fails (a full disk) removes its temporary and raises CheckpointError; the previous file is untouched.
"""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dino_model.errors import CheckpointError
from dino_model.runtime import atomic

logger = logging.getLogger(__name__)

LATEST = "checkpoint.pth"


METRICS = "metrics.jsonl"
# The temporaries of save_atomic / write_text_atomic for the files a run writes (mkstemp adds 8 characters).
STALE_TEMPORARY = re.compile(r"^\.(checkpoint\d*\.pth|metrics\.jsonl)\.[a-z0-9_]{8}$")


def save_atomic(state: dict[str, Any], path: str | Path) -> Path:
    """torch.save to `path` atomically (runtime/atomic.py)."""
    return _write_atomic(Path(path), lambda fh: torch.save(state, fh))


def write_text_atomic(text: str, path: str | Path) -> Path:
    """Replace a text file as a whole: the old content or the new one, never a mix."""
    return _write_atomic(Path(path), lambda fh: fh.write(text.encode()))


class _RecordingFile:
    """A binary file that remembers its write error: torch.save's zip writer turns it into a bare RuntimeError."""

    def __init__(self, fh: Any) -> None:
        self.fh, self.error = fh, None

    def write(self, data: bytes) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.fh.flush()


def _write_atomic(path: Path, write: Callable[[Any], Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    existed = path.is_file()
    recording: _RecordingFile | None = None

    def write_recorded(fh: Any) -> None:
        nonlocal recording
        recording = _RecordingFile(fh)
        write(recording)

    try:
        return atomic.write_with(path, write_recorded)
    except (OSError, RuntimeError) as exc:
        cause = exc if isinstance(exc, OSError) else getattr(recording, "error", None)
        if cause is None:
            raise
        raise CheckpointError(_write_failure(path, cause, existed)) from exc


def _write_failure(path: Path, exc: OSError, existed: bool) -> str:
    reason = exc.strerror or str(exc)
    kept = (f"the previous {path.name} is kept unchanged; free space under {path.parent}, then rerun with --resume"
            if existed else f"no earlier {path.name} exists; free space under {path.parent}, then rerun")
    return f"cannot write {path}: {reason}; {kept}"


def remove_stale_temporaries(output_dir: str | Path) -> list[Path]:
    """Delete the temporaries a killed run left in `output_dir` (only this module's names, only that folder)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    stale = sorted(p for p in folder.iterdir() if STALE_TEMPORARY.match(p.name) and p.is_file())
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        logger.info("removed %d temporary file(s) left by an interrupted run: %s", len(stale),
                    ", ".join(p.name for p in stale))
    return stale


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
