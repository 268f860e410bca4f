"""Image folders packed into WebDataset tar shards, and the shards.json index that describes them.

At ImageNet scale one file per image costs DVC a fraction of a millisecond per file on every add and
push, and the object store one request per file; a few hundred 256 MB tars cost neither. Each
sample is `<key>.<ext>` (the original encoded bytes, unchanged) plus `<key>.cls` (the label as
decimal text) when the folder has class sub-folders; the key is the image's position in the folder
scan's sorted order, so an image keeps the index - and therefore the crops - it has when training
reads the folder itself.

The images are packed in a fixed pseudo-random order (a permutation drawn from PACK_ORDER_SEED), not
in the folder's order: a class folder of ImageNet fills about half a 256 MB shard, so shards in
folder order would hold one or two classes each and the streaming reader's batches, drawn from a few
open shards, would mix only a handful of classes. Shuffled at packing, every shard is a sample of
the whole set.

Packing is byte-deterministic: sorted input, a fixed order, fixed tar headers (mtime 0, uid/gid 0, empty owner
names, mode 0444, ustar format), so packing an unchanged folder again rewrites identical shards
and DVC sees no change. The shards are written with webdataset's TarWriter, which takes a fixed
mtime, owner names and mode and writes members in sorted suffix order; nothing in its output
depends on the clock or the machine once those are fixed.

The index is input, not trusted code: a shard name in it is a plain file name beside shards.json
(SHARD_NAME: letters, digits, '.', '_', '-', '+', not starting with '.'), never a path. A name such as
`../../outside.tar`, `/etc/x.tar` or `s3://other/x.tar` would make training read a tar from outside
the versioned shard folder (on local disk, through fsspec or inside a DVC repository alike), so
reading the index refuses it, naming the entry and the index, before any shard is opened.
"""

from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dino_model.data.folders import Sample, scan_folder
from dino_model.errors import DataError
from dino_model.runtime import atomic
from dino_model.runtime.digests import file_sha256

logger = logging.getLogger(__name__)

INDEX_NAME = "shards.json"
FORMAT_VERSION = 1
SHARD_PATTERN = "shard-{:06d}.tar"
DEFAULT_SHARD_BYTES = 256 * 1024**2
TAR_BLOCK = 512
PACK_ORDER_SEED = 0
_POWERS = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}
SHARD_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]*")  # one file name: no separator, no '..', no scheme


@dataclass(frozen=True)
class ShardInfo:
    name: str  # file name beside shards.json
    count: int  # samples in the shard
    bytes: int  # size of the tar file
    sha256: str


@dataclass(frozen=True)
class ShardIndex:
    classes: list[str]  # label i is classes[i]; empty when the packed folder had no class folders
    shards: list[ShardInfo]
    skipped: int = 0  # unreadable images left out when packing

    @property
    def total(self) -> int:
        return sum(s.count for s in self.shards)

    @property
    def counts(self) -> list[int]:
        return [s.count for s in self.shards]

    def to_dict(self) -> dict[str, Any]:
        return {"format": "webdataset", "version": FORMAT_VERSION, "classes": self.classes, "total": self.total,
                "skipped": self.skipped, "shards": [asdict(s) for s in self.shards]}


def parse_index(text: str, where: str) -> ShardIndex:
    """The index in `text` (read from `where`), or a DataError saying what is wrong with it."""
    try:
        raw = json.loads(text)
        if raw.get("version") != FORMAT_VERSION:
            raise DataError(f"{where}: shard index format version {raw.get('version')!r}, this code reads "
                            f"version {FORMAT_VERSION}; pack the folder again with `dino-mlops data shard`")
        shards = [ShardInfo(str(s["name"]), int(s["count"]), int(s["bytes"]), str(s["sha256"])) for s in raw["shards"]]
        index = ShardIndex([str(c) for c in raw["classes"]], shards, int(raw.get("skipped", 0)))
        total = int(raw["total"])
        check_shard_names([s.name for s in shards], where)
    except DataError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise DataError(f"{where} is not a valid shard index ({type(exc).__name__}: {exc}); "
                        f"pack the folder again with `dino-mlops data shard`") from None
    if total != index.total or not shards:
        raise DataError(f"{where}: total {total} does not match the {len(shards)} shard(s) listed "
                        f"({index.total} samples); the index is damaged or empty")
    return index


def unsafe_shard_name(name: str) -> str | None:
    """Why `name` is not a plain file name inside the shard folder; None when it is one."""
    if SHARD_NAME.fullmatch(name):
        return None
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:[/\\]", name):
        return "an absolute path"
    if "://" in name:
        return "a URL"
    if ".." in re.split(r"[/\\]", name):
        return "a path leaving the shard folder"
    return "not a plain file name (letters, digits, '.', '_', '-', '+'; no separator, not starting with '.')"


def check_shard_names(names: list[str], where: str) -> None:
    """A DataError naming the first entry of the index at `where` that is not a plain, unique shard file name."""
    seen: set[str] = set()
    for position, name in enumerate(names):
        why = unsafe_shard_name(name) or ("listed twice" if name in seen else None)
        if why:
            raise DataError(f"{where}: shard entry {position} names {name!r}, {why}; shard names must be plain "
                            f"file names inside the shard folder. The index is damaged or was tampered with: "
                            f"pack the folder again with `dino-mlops data shard`")
        seen.add(name)


def parse_size(text: str) -> int:
    """Bytes in '256MB', '1.5GB', '64K', '4096' (K, M, G, T are powers of 1024; the B is optional)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)B?", text.strip().upper())
    size = int(float(match.group(1)) * 1024 ** _POWERS[match.group(2)]) if match else 0
    if size <= 0:
        raise DataError(f"shard size {text!r} is not a positive size such as 256MB, 1GB or 4096")
    return size


def sample_key(index: int) -> str:
    return f"{index:09d}"


def sample_index(sample: dict[str, Any], shard: str) -> int:
    """The folder index a packed sample carries in its key."""
    key = str(sample.get("__key__", ""))
    if not key.isdigit():
        raise DataError(f"shard {shard} holds a sample keyed {key!r}, not an image index; pack the folder again "
                        "with `dino-mlops data shard`")
    return int(key)


def pack_folder(src: str | Path, out: str | Path, *, shard_bytes: int = DEFAULT_SHARD_BYTES,
                max_per_shard: int | None = None) -> ShardIndex:
    """Pack the readable images of `src` into tar shards under `out` and write out/shards.json.

    A shard is closed before the sample that would take it past `shard_bytes` (a single larger
    sample gets a shard of its own) or once it holds `max_per_shard` samples. Shards of an earlier
    pack into `out` that the new index does not list are removed.
    """
    if shard_bytes <= 0 or (max_per_shard is not None and max_per_shard <= 0):
        raise DataError(f"shard size {shard_bytes} bytes / max per shard {max_per_shard} must be positive")
    scan = scan_folder(Path(src))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shards = [_write_shard(out / SHARD_PATTERN.format(i), group)
              for i, group in enumerate(_groups(packing_order(scan.samples), shard_bytes, max_per_shard))]
    index = ShardIndex(scan.classes, shards, len(scan.skipped))
    _remove_stale(out, {s.name for s in shards})
    atomic.write_json(out / INDEX_NAME, index.to_dict(), indent=1, mode=0o644)
    logger.info("packed %d images of %s into %d shard(s) in %s (%d unreadable skipped)",
                index.total, src, len(shards), out, index.skipped)
    return index


def packing_order(samples: list[Sample]) -> list[tuple[int, Sample]]:
    """(folder index, sample) in the packed order: a fixed permutation, the same on every machine."""
    order = list(range(len(samples)))
    random.Random(f"dino-pack/{PACK_ORDER_SEED}").shuffle(order)
    return [(i, samples[i]) for i in order]


def _member_bytes(size: int) -> int:
    """Bytes a member of `size` bytes takes in a ustar tar: header block plus padded data."""
    return TAR_BLOCK + -(-size // TAR_BLOCK) * TAR_BLOCK


def _sample_bytes(sample: Sample) -> int:
    cls = _member_bytes(len(str(sample.label))) if sample.label >= 0 else 0
    return _member_bytes(sample.path.stat().st_size) + cls


def _groups(samples: list[tuple[int, Sample]], shard_bytes: int, max_per_shard: int | None):
    """The (folder index, sample) pairs of each shard, in order."""
    group, size = [], 0
    for indexed in samples:
        grow = _sample_bytes(indexed[1])
        full = max_per_shard is not None and len(group) >= max_per_shard
        if group and (full or size + grow > shard_bytes):
            yield group
            group, size = [], 0
        group.append(indexed)
        size += grow
    if group:
        yield group


def _write_shard(path: Path, samples: list[tuple[int, Sample]]) -> ShardInfo:
    from webdataset import TarWriter

    with atomic.replacing(path, mode=0o644) as temporary, temporary.open("wb") as stream:
        writer = TarWriter(stream, user="", group="", mode=0o444, mtime=0, encoder=False, format="USTAR_FORMAT")
        for index, sample in samples:
            member = {"__key__": sample_key(index), sample.path.suffix.lower().lstrip("."): sample.path.read_bytes()}
            if sample.label >= 0:
                member["cls"] = str(sample.label).encode()
            writer.write(member)
        writer.close()
    return ShardInfo(path.name, len(samples), path.stat().st_size, file_sha256(path))


def _remove_stale(out: Path, keep: set[str]) -> None:
    for old in sorted(out.glob("shard-*.tar")):
        if old.name not in keep:
            old.unlink()
            logger.info("removed %s, a shard of an earlier pack", old)


