"""Logging set-up for entry points, a progress helper, and the JSON-lines metrics writer.

The library only calls `logging.getLogger(__name__)`; handlers are added here, by entry points
(CLI, pipeline components, spawned workers). Rank 0 logs at INFO, other ranks at WARNING.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def setup_logging(level: int | str = logging.INFO, *, rank: int = 0, log_file: str | Path | None = None) -> None:
    """Configure the root logger once; repeated calls replace the handlers."""
    fmt = f"%(asctime)s [rank{rank}] %(levelname)s %(name)s: %(message)s"
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(
        level=level if rank == 0 else logging.WARNING, format=fmt, handlers=handlers, force=True
    )


def progress(items: Iterable[T], *, desc: str, total: int | None = None, enabled: bool = True) -> Iterator[T]:
    """A tqdm bar on an interactive terminal; the plain iterable elsewhere (pods, CI)."""
    if enabled and sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(items, desc=desc, total=total, leave=False)
    else:
        yield from items


class JsonlWriter:
    """Appends one JSON object per call to a file; non-finite floats become null."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps({k: _finite(v) for k, v in record.items()}) + "\n")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
