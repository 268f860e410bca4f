"""File digests: one sha256 for every place that records or checks what a file holds.

Checkpoints a run started from, exported models and their export records, and tar shards are all
identified by content; they share this helper, which sits below every layer that needs it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def work_id(prefix: str, *parts: str) -> str:
    """`prefix-<12 hex digits>` naming a piece of work by what defines it (the same parts, the same id).

    A cached pipeline step labels what it pushes with it instead of a run id, which would change its cache key.
    """
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:12]
    return f"{prefix}-{digest}"
