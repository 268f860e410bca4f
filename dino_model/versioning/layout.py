"""Where a data version lives in a repository, and how its record is replaced.

The lowest layer of versioning: repo.py (opening DVC) and switch.py (moving data/ between versions)
both build on it, so neither has to import the other for these names.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

DATA_DIR = "data"  # the tracked directory, relative to the repository root
DVC_FILE = "data.dvc"  # its .dvc file: outs[0] is the data version


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` in one rename, so readers never see a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
