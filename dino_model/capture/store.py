"""The capture store: captured images by UTC day, each beside a record of when and under which model.

Layout (a local folder, e.g. a mounted claim, or any fsspec URL such as a prefix of the DVC remote's
bucket, `s3://bucket/captured`):

    <store>/<YYYY-MM-DD>/<sha256>.<ext>    the image bytes exactly as the client sent them
    <store>/<YYYY-MM-DD>/<sha256>.json     {sha256, time, model_version, drift_score, bytes, format, width, height}

The image is written first and its record second, so a record names a complete image; an image
without a record (a writer killed between the two) is ignored by readers and removed by `expire`.
Days are folders so that retention and erasure delete whole days with one listing, and so that a
snapshot takes a date range. The file name is the content hash: the same image stored twice lands
on the same name, which is what de-duplication checks.

fsspec is imported lazily and only for URLs (S3 needs s3fs, from `dino-mlops[s3]`): the serving
side's Python backend imports this module with numpy and Pillow alone.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from dino_model.errors import ConfigError, DataError
from dino_model.runtime import atomic

logger = logging.getLogger(__name__)

DAY_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}$")
HASH_PATTERN = re.compile(r"^[0-9a-f]{64}$")
EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}


@dataclass(frozen=True)
class CapturedImage:
    """The record stored beside one captured image."""

    sha256: str
    time: str  # ISO 8601, UTC
    model_version: str
    drift_score: float | None
    bytes: int
    format: str
    width: int
    height: int

    @property
    def day(self) -> str:
        return self.time[:10]

    @property
    def extension(self) -> str:
        return EXTENSIONS.get(self.format, self.format.lower())

    @property
    def image_name(self) -> str:
        return f"{self.sha256}.{self.extension}"


def day_of(when: datetime | date | str) -> str:
    """A UTC day as the store names it (YYYY-MM-DD)."""
    text = when if isinstance(when, str) else when.isoformat()
    day = text[:10]
    if not DAY_PATTERN.match(day):
        raise ConfigError(f"not a day (YYYY-MM-DD): {text!r}")
    return day


class CaptureStore:
    """Read, write and delete captured images under one folder or URL."""

    def __init__(self, url: str | Path) -> None:
        self.url = str(url)
        if not self.url:
            raise ConfigError("no capture store given: a folder or a URL such as s3://bucket/captured")
        self._remote = "://" in self.url and not self.url.startswith("file://")
        self._fs: Any = None
        self.root = self.url.rstrip("/") if self._remote else str(Path(self.url.removeprefix("file://")))

    def __repr__(self) -> str:
        return f"CaptureStore({self.url!r})"

    # -- the file system: pathlib for folders, fsspec for URLs -----------------------------------
    @property
    def fs(self) -> Any:
        if self._fs is None:
            try:
                import fsspec
                self._fs, _ = fsspec.core.url_to_fs(self.url)
            except ImportError as exc:
                raise ConfigError(f"capture store {self.url} needs a file system plugin that is not "
                                  f"installed ({exc}); for S3: pip install 'dino-mlops[s3]'") from None
        return self._fs

    def _path(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    def _write(self, path: str, data: bytes) -> None:
        if self._remote:
            self.fs.pipe_file(path, data)
            return
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(path, data, mode=0o644)

    def _read(self, path: str) -> bytes:
        return self.fs.cat_file(path) if self._remote else Path(path).read_bytes()

    def _names(self, folder: str) -> list[str]:
        if self._remote:
            try:
                return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(folder, detail=False))
            except FileNotFoundError:
                return []
        path = Path(folder)
        return sorted(p.name for p in path.iterdir()) if path.is_dir() else []

    def _remove_day(self, day: str) -> None:
        if self._remote:
            self.fs.rm(self._path(day), recursive=True)
            self.fs.invalidate_cache()
        else:
            shutil.rmtree(self._path(day), ignore_errors=True)

    def _remove(self, path: str) -> None:
        if self._remote:
            self.fs.rm_file(path)
        else:
            Path(path).unlink(missing_ok=True)

    # -- what the store holds ------------------------------------------------------------------
    def days(self) -> list[str]:
        """The captured days, oldest first."""
        return [name for name in self._names(self.root) if DAY_PATTERN.match(name)]

    def records(self, day: str) -> list[CapturedImage]:
        """The complete captures of one day (a record and its image), by hash."""
        names = set(self._names(self._path(day)))
        found = []
        for name in sorted(names):
            if not (name.endswith(".json") and HASH_PATTERN.match(name[:-5])):
                continue
            record = CapturedImage(**json.loads(self._read(self._path(day, name))))
            if record.image_name in names:
                found.append(record)
        return found

    def iter_records(self, days: Iterable[str] | None = None) -> Iterator[CapturedImage]:
        for day in self.days() if days is None else days:
            yield from self.records(day)

    def image_bytes(self, record: CapturedImage) -> bytes:
        return self._read(self._path(record.day, record.image_name))

    def hashes(self) -> set[str]:
        """Every stored image's content hash (names only: no record is read)."""
        return {name[:-5] for day in self.days() for name in self._names(self._path(day))
                if name.endswith(".json") and HASH_PATTERN.match(name[:-5])}

    def count(self, day: str) -> int:
        return sum(1 for name in self._names(self._path(day)) if name.endswith(".json"))

    # -- writing and deleting ----------------------------------------------------------------
    def put(self, record: CapturedImage, data: bytes) -> None:
        """Store one image, then its record (the record marks it complete)."""
        self._write(self._path(record.day, record.image_name), data)
        self._write(self._path(record.day, f"{record.sha256}.json"),
                    json.dumps(asdict(record), sort_keys=True).encode())

    def expire(self, retention_days: int, now: datetime) -> list[str]:
        """Delete the days older than `retention_days` before `now`'s day; the days deleted."""
        oldest_kept = (now.date() - timedelta(days=retention_days - 1)).isoformat()
        return self.erase_days(day for day in self.days() if day < oldest_kept)

    def erase_days(self, days: Iterable[str]) -> list[str]:
        erased = []
        for day in days:
            self._remove_day(day_of(day))
            erased.append(day)
            logger.info("capture store %s: erased %s", self.url, day)
        return erased

    def erase_hashes(self, hashes: Iterable[str]) -> int:
        """Delete every stored copy of these images (by content hash), on every day; how many."""
        wanted = set(hashes)
        bad = sorted(h for h in wanted if not HASH_PATTERN.match(h))
        if bad:
            raise DataError(f"not a sha256 hash: {bad[0]!r}")
        erased = 0
        for day in self.days():
            for name in self._names(self._path(day)):
                stem = name.split(".", 1)[0]
                if stem in wanted:
                    self._remove(self._path(day, name))
                    erased += name.endswith(".json")
        if self._remote:
            self.fs.invalidate_cache()
        return erased
