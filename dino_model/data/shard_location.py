"""Where a folder of shards lives: a local path, any fsspec URL, or a path in a DVC repository.

`data.root` is one string, so the route is spelled in it:

- `/data/imagenet-shards` (or a relative path): the local folder holding shards.json;
- `s3://bucket/imagenet-shards`, `file:///...`, any other `scheme://` that fsspec knows;
- `dvc://<path in the repository>?repo=<path or git URL>&rev=<git revision>&remote=<remote name>`:
  read through DVC's filesystem, which serves each shard from the local DVC cache or streams it from
  the remote when it is not cached - no `dvc pull` of the whole data set first. `repo` defaults to
  the working directory's repository, `rev` to its workspace, `remote` to the default remote.

Whatever the route, only plain file names directly below the root are opened (shards.py's rule,
checked when the index is read and again here), so an index cannot point training outside it.

The filesystem is opened lazily in each process (DataLoader workers included, forked or spawned)
and never shared: a DVC repository handle (git objects, sqlite indexes) does not survive being
copied into another process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qs, urlsplit

from dino_model.data.shards import INDEX_NAME, ShardIndex, parse_index, unsafe_shard_name
from dino_model.errors import DataError

DVC_SCHEME = "dvc"
_DVC_OPTIONS = ("repo", "rev", "remote")


class MissingFileError(DataError):
    """A file the index lists (or the index itself) is not there."""


def is_url(root: str) -> bool:
    return "://" in root


def is_shard_root(root: str | Path) -> bool:
    """True when `root` is a URL (folders are local paths only) or a folder holding shards.json."""
    text = str(root)
    return is_url(text) or (Path(text) / INDEX_NAME).is_file()


class ShardLocation:
    """Opens shards.json and the shards it lists, below one root of any supported route."""

    def __init__(self, root: str | Path) -> None:
        self.root = str(root)
        self._fs: Any = None
        self._pid = 0
        self._base, self._options = _parse_root(self.root)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fs": None}

    def __str__(self) -> str:
        return self.root

    def path(self, name: str) -> str:
        """`name` below the root; a name that is not a plain file name there is refused (see shards.py)."""
        if (why := unsafe_shard_name(name)) is not None:
            raise DataError(f"{name!r} is not a file inside {self.root}: {why}")
        return f"{self._base.rstrip('/')}/{name}" if self._base else name

    def open(self, name: str) -> IO[bytes]:
        """A binary stream of `name`, read front to back."""
        with self._errors(name):
            return self.fs.open(self.path(name), "rb")

    def size(self, name: str) -> int | None:
        """Bytes in `name`; None when the filesystem does not record sizes (DVC's directory listings)."""
        with self._errors(name):
            size = self.fs.info(self.path(name)).get("size")
        return None if size is None else int(size)

    @contextmanager
    def _errors(self, name: str) -> Iterator[None]:
        """A missing file, an unreachable store or a repository DVC cannot open, as a DataError naming it."""
        try:
            yield
        except FileNotFoundError:
            raise MissingFileError(f"{name} is missing under {self.root}") from None
        except _store_errors(self.root) as exc:
            raise DataError(f"cannot read {name} under {self.root}: {type(exc).__name__}: {exc}") from None

    def read_index(self) -> ShardIndex:
        where = f"{self.root} ({INDEX_NAME})"
        if not self._exists(INDEX_NAME):
            raise DataError(f"{self.root} holds no {INDEX_NAME}; pack an image folder into shards there with "
                            f"`dino-mlops data shard SRC {self.root}`, or point data.root at an image folder")
        try:
            with self.open(INDEX_NAME) as f:
                text = f.read().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{where} is not UTF-8 text ({exc})") from None
        return parse_index(text, where)

    def check_shards(self, index: ShardIndex) -> None:
        """Every listed shard exists with its recorded size (cheap: no data read); else DataError."""
        wrong = []
        for shard in index.shards:
            try:
                size = self.size(shard.name)
            except MissingFileError:
                wrong.append(f"{shard.name} (missing)")
                continue
            if size is not None and size != shard.bytes:
                wrong.append(f"{shard.name} ({size} bytes, index says {shard.bytes})")
        if wrong:
            raise DataError(f"{len(wrong)} shard(s) under {self.root} do not match {INDEX_NAME}: "
                            f"{', '.join(wrong[:5])}{' ...' if len(wrong) > 5 else ''}")

    def _exists(self, name: str) -> bool:
        try:
            self.size(name)
        except MissingFileError:
            return False
        return True

    @property
    def fs(self) -> Any:
        if self._fs is None or self._pid != os.getpid():  # a forked worker opens its own
            self._fs, self._pid = _filesystem(self.root, self._options), os.getpid()
        return self._fs


def _parse_root(root: str) -> tuple[str, dict[str, str]]:
    """(base path for the filesystem, DVC options) of a root string."""
    if not is_url(root):
        return str(Path(root).resolve()), {}
    parts = urlsplit(root)
    if parts.scheme != DVC_SCHEME:
        return root, {}
    query = parse_qs(parts.query, strict_parsing=bool(parts.query))
    unknown = set(query) - set(_DVC_OPTIONS)
    if unknown:
        raise DataError(f"{root}: unknown option(s) {', '.join(sorted(unknown))}; a dvc:// root takes "
                        f"{', '.join(_DVC_OPTIONS)}")
    base = (parts.netloc + parts.path).strip("/")
    if not base:
        raise DataError(f"{root}: no path inside the repository; write dvc://data/shards?repo=...")
    return base, {k: v[-1] for k, v in query.items()}


def _store_errors(root: str) -> tuple[type[Exception], ...]:
    """What the route raises for a store it cannot read (importing dvc only for dvc:// roots: it is slow)."""
    if urlsplit(root).scheme != DVC_SCHEME:
        return (OSError,)
    from dvc.exceptions import DvcException

    return OSError, DvcException


def _filesystem(root: str, options: dict[str, str]) -> Any:
    if not is_url(root):
        from fsspec.implementations.local import LocalFileSystem

        return LocalFileSystem()
    if urlsplit(root).scheme == DVC_SCHEME:
        from dvc.api import DVCFileSystem

        return DVCFileSystem(options.get("repo"), rev=options.get("rev"), remote=options.get("remote"))
    import fsspec

    try:
        fs, _ = fsspec.core.url_to_fs(root)
    except (ImportError, ValueError) as exc:
        raise DataError(f"cannot open {root} through fsspec: {exc}") from None
    return fs

