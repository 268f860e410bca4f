"""Packing image folders into tar shards: bytes and labels kept, byte-identical repacks, the index."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tarfile
from pathlib import Path

import pytest

from dino_model.cli.main import main
from dino_model.data.shard_location import ShardLocation
from dino_model.data.shard_stream import ShardImages
from dino_model.data.shards import INDEX_NAME, pack_folder, parse_size
from dino_model.errors import DataError

from .shard_helpers import write_folder


def _members(tar_path: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(tar_path) as tar:
        return [(m, tar.extractfile(m).read()) for m in tar.getmembers()]


def test_every_image_comes_back_byte_for_byte_with_its_label(tmp_path: Path):
    paths = write_folder(tmp_path / "src", 23, classes=3)
    (tmp_path / "src" / "c1" / "zz-broken.png").write_bytes(b"\x89PNG truncated")
    index = pack_folder(tmp_path / "src", tmp_path / "out", max_per_shard=5)
    assert (index.total, index.skipped, index.classes) == (23, 1, ["c0", "c1", "c2"])
    assert [s.count for s in index.shards] == [5, 5, 5, 5, 3]
    expected = sorted(paths, key=lambda p: (p.parent.name, p.name))  # the folder scan's order
    got = [m for shard in index.shards for m in _members(tmp_path / "out" / shard.name)]
    keys = [int(m.name.split(".")[0]) for m, _ in got[::2]]
    assert sorted(keys) == list(range(23)) and keys != sorted(keys)  # every image once, classes mixed
    assert [m.name for m, _ in got] == [f"{k:09d}.{ext}" for k in keys for ext in ("cls", "png")]
    first_shard_labels = {label for _, label in got[:10:2]}
    assert len(first_shard_labels) > 1
    for k, i in zip(keys, range(0, 46, 2), strict=True):  # the key is the image's folder index
        (cls_info, label), (png_info, data) = got[i], got[i + 1]
        path = expected[k]
        assert data == path.read_bytes() and label == str(int(path.parent.name[1:])).encode()
        for info in (cls_info, png_info):
            assert (info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode) == (0, 0, 0, "", "", 0o444)
    raw = json.loads((tmp_path / "out" / INDEX_NAME).read_text())
    assert raw["total"] == 23 and raw["skipped"] == 1 and raw["version"] == 1
    for shard in raw["shards"]:
        data = (tmp_path / "out" / shard["name"]).read_bytes()
        assert shard["sha256"] == hashlib.sha256(data).hexdigest() and shard["bytes"] == len(data)


def test_packing_the_same_folder_twice_gives_identical_bytes_and_drops_stale_shards(tmp_path: Path):
    write_folder(tmp_path / "src", 12, classes=2, fmt="jpg")
    pack_folder(tmp_path / "src", tmp_path / "a", max_per_shard=2)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "shard-000009.tar").write_bytes(b"from an earlier pack")
    pack_folder(tmp_path / "src", tmp_path / "b", max_per_shard=2)
    files_a = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()}
    files_b = {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()}
    assert len(files_a) == 7 and files_a == files_b


def test_a_flat_folder_packs_without_labels_and_the_size_limit_closes_shards(tmp_path: Path):
    for path in write_folder(tmp_path / "nested", 6, classes=1, size=32):
        path.rename(tmp_path / path.name)
    (tmp_path / "nested" / "c0").rmdir()
    (tmp_path / "nested").rmdir()
    sizes = sorted(p.stat().st_size for p in tmp_path.glob("*.png"))
    index = pack_folder(tmp_path, tmp_path / "out", shard_bytes=2 * (512 + sizes[-1] + 512))
    assert index.classes == [] and index.total == 6 and len(index.shards) == 3
    names = [m.name for shard in index.shards for m, _ in _members(tmp_path / "out" / shard.name)]
    assert len(names) == 6 and sorted(names) == [f"{i:09d}.png" for i in range(6)]


def test_sizes_parse_and_bad_ones_say_what_is_expected():
    assert parse_size("256MB") == 256 * 2**20 and parse_size("1.5g") == 3 * 2**29 and parse_size("4096") == 4096
    for bad in ("", "0MB", "12 parsecs", "-1"):
        with pytest.raises(DataError, match="not a positive size such as 256MB"):
            parse_size(bad)


@pytest.mark.parametrize(("content", "message"), [
    (None, r"holds no shards\.json; pack an image folder"),
    ("{not json", r"is not a valid shard index \(JSONDecodeError"),
    ('{"version": 9}', r"format version 9, this code reads version 1"),
    ('{"version": 1, "classes": [], "total": 3, "shards": []}', r"total 3 does not match the 0 shard"),
    ('{"version": 1, "classes": [], "total": 1, "shards": [{"name": "a.tar"}]}', r"not a valid shard index \(KeyError"),
])
def test_a_missing_or_damaged_index_is_a_clear_error(tmp_path: Path, content: str | None, message: str):
    if content is not None:
        (tmp_path / INDEX_NAME).write_text(content)
    with pytest.raises(DataError, match=message):
        ShardLocation(str(tmp_path)).read_index()


def test_the_cli_packs_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture):
    write_folder(tmp_path / "src", 7, classes=2)
    assert main(["data", "shard", str(tmp_path / "src"), str(tmp_path / "out"), "--max-per-shard", "3"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == {"index": str(tmp_path / "out" / INDEX_NAME), "shards": 3, "images": 7, "skipped": 0,
                      "classes": 2}
    assert main(["data", "shard", str(tmp_path / "src"), str(tmp_path / "o2"), "--shard-size", "lots"]) == 2
    assert "shard size 'lots' is not a positive size" in capsys.readouterr().err


def _index_listing(folder: Path, name: str) -> str:
    """A valid index of one real shard, except that its entry names `name`."""
    write_folder(folder / "src", 3)
    index = pack_folder(folder / "src", folder / "shards")
    raw = json.loads((folder / "shards" / INDEX_NAME).read_text())
    raw["shards"][0]["name"] = name
    assert len(index.shards) == 1
    return json.dumps(raw)


@pytest.mark.parametrize(("name", "why"), [
    ("../outside.tar", "a path leaving the shard folder"),
    ("../../outside.tar", "a path leaving the shard folder"),
    ("ok/../../outside.tar", "a path leaving the shard folder"),
    ("..\\outside.tar", "a path leaving the shard folder"),
    ("/tmp/outside.tar", "an absolute path"),
    ("C:\\outside.tar", "an absolute path"),
    ("file:///tmp/outside.tar", "a URL"),
    ("s3://other-bucket/outside.tar", "a URL"),
    ("sub/shard.tar", "not a plain file name"),
    ("..", "a path leaving the shard folder"),
    (".hidden.tar", "not a plain file name"),
    ("", "not a plain file name"),
])
def test_a_shard_name_outside_the_shard_folder_is_refused_when_the_index_is_read(tmp_path: Path, name: str,
                                                                                  why: str):
    """`../../outside.tar` in shards.json must not make training read a tar beside or above the folder."""
    outside = tmp_path / "outside.tar"
    text = _index_listing(tmp_path, name)
    shutil.copy(tmp_path / "shards" / "shard-000000.tar", outside)  # a real tar there: only the name rule stops it
    (tmp_path / "shards" / INDEX_NAME).write_text(text)
    for root in (str(tmp_path / "shards"), f"file://{tmp_path}/shards"):
        with pytest.raises(DataError, match=re.escape(f"{root} ({INDEX_NAME}): shard entry 0 names {name!r}, {why}")):
            ShardLocation(root).read_index()
        with pytest.raises(DataError, match="shard names must be plain file names inside the shard folder"):
            ShardImages(root)


def test_a_shard_listed_twice_is_refused(tmp_path: Path):
    write_folder(tmp_path / "src", 4)
    pack_folder(tmp_path / "src", tmp_path / "shards", max_per_shard=2)
    raw = json.loads((tmp_path / "shards" / INDEX_NAME).read_text())
    raw["shards"][1] = raw["shards"][0]
    (tmp_path / "shards" / INDEX_NAME).write_text(json.dumps(raw))
    with pytest.raises(DataError, match=r"shard entry 1 names 'shard-000000\.tar', listed twice"):
        ShardLocation(str(tmp_path / "shards")).read_index()


def test_the_location_opens_only_plain_names_below_its_root(tmp_path: Path):
    location = ShardLocation(str(tmp_path))
    assert location.path("shard-000000.tar") == f"{tmp_path}/shard-000000.tar"
    for name in ("../x.tar", "/etc/passwd", "a/b.tar"):
        with pytest.raises(DataError, match=f"is not a file inside {re.escape(str(tmp_path))}"):
            location.open(name)
