"""Replacing a file as a whole: a reader sees the old content or the new one, never a mix.

Checkpoints, configs, manifests, journals, keys and shards are all read while another process may be
writing them, and a run can be killed mid-write. Every such write goes through `replacing`: a temporary
with a unique name in the same folder (so the rename stays on one filesystem and two writers never share
it), fsync of the file, one rename over the target, fsync of the folder (so the rename survives a power
loss). The temporary is named `.<name>.XXXXXXXX` (`<name>.XXXXXXXX` when the name is already hidden),
which is what the clean-ups of stale temporaries look for. It is created with mode 0600; `mode` sets the
final file's mode before the rename, so a private file is never readable by others, not even briefly.

Imports nothing beyond the standard library: the torch-free client install imports it (through the
admin key and the similarity index). The Triton Python backend, which imports nothing of this package,
writes no file that others read.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO


def temporary_prefix(path: Path) -> str:
    """The prefix of `path`'s temporaries: hidden, and naming the file they replace."""
    name = path.name if path.name.startswith(".") else f".{path.name}"
    return f"{name}."


@contextmanager
def replacing(path: str | Path, *, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block ends cleanly, rename it over `path` durably.

    For writers that take a file name (onnx, safetensors, faiss). When the block raises, the
    temporary is removed and `path` is untouched.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=temporary_prefix(path), dir=path.parent)
    os.close(fd)
    temporary = Path(name)
    try:
        yield temporary
        fsync(temporary)
        if mode is not None:
            temporary.chmod(mode)
        temporary.replace(path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync(path.parent)


def write_with(path: str | Path, write: Callable[[BinaryIO], Any], *, mode: int | None = None) -> Path:
    """Replace `path` with what `write` writes to the binary file object it is given."""
    path = Path(path)
    with replacing(path, mode=mode) as temporary, os.fdopen(os.open(temporary, os.O_WRONLY), "wb") as fh:
        write(fh)
    return path


def write_bytes(path: str | Path, data: bytes, *, mode: int | None = None) -> Path:
    """Replace `path` with `data`."""
    return write_with(path, lambda fh: fh.write(data), mode=mode)


def write_text(path: str | Path, text: str, *, mode: int | None = None) -> Path:
    """Replace `path` with `text`, UTF-8 encoded."""
    return write_bytes(path, text.encode(), mode=mode)


def write_json(path: str | Path, value: Any, *, indent: int | None = 2, mode: int | None = None) -> Path:
    """Replace `path` with `value` as JSON (and a final newline)."""
    return write_text(path, json.dumps(value, indent=indent) + "\n", mode=mode)


def fsync(path: str | Path) -> None:
    """Flush a file, or a folder's entries (a rename, a removal), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
