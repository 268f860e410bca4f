"""Shards opened from a local folder, an fsspec URL, and a DVC repository whose data is only on its remote."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest

from dino_model.data.shard_location import ShardLocation, is_shard_root
from dino_model.data.shard_stream import ShardImages, ShardMultiCropDataset, build_shard_loader
from dino_model.data.shards import pack_folder
from dino_model.errors import DataError

from .shard_helpers import IdTransform, write_folder


def _ids(root: str, workers: int = 0) -> Counter:
    dataset = ShardMultiCropDataset(ShardImages(root), IdTransform(), 0, batch_size=2)
    return Counter(int(i) for crops, _, _ in build_shard_loader(dataset, num_workers=workers) for i in crops[0][:, 0])


def test_local_folders_and_file_urls_read_the_same_samples(tmp_path: Path):
    write_folder(tmp_path / "src", 10)
    pack_folder(tmp_path / "src", tmp_path / "shards", max_per_shard=4)
    assert is_shard_root(tmp_path / "shards") and not is_shard_root(tmp_path / "src")
    assert is_shard_root("s3://bucket/shards")  # URLs are never image folders
    assert _ids(str(tmp_path / "shards")) == _ids(f"file://{tmp_path}/shards") == Counter(range(10))


def test_shards_stream_from_a_dvc_remote_with_no_local_copy(tmp_path: Path, dvc_site_cache: Path, git_identity: None):
    from dino_model.versioning import init_repo, snapshot
    from dino_model.versioning.repo import git

    repo = tmp_path / "project"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    init_repo(repo, remote_dir=tmp_path / "remote")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "dvc init")
    write_folder(tmp_path / "src", 10)
    pack_folder(tmp_path / "src", repo / "data" / "shards", max_per_shard=4)
    snapshot(repo, "shards v1")
    shutil.rmtree(repo / "data")
    shutil.rmtree(repo / ".dvc" / "cache")
    assert any((tmp_path / "remote").rglob("*"))
    assert _ids(f"dvc://data/shards?repo={repo}&rev=main", workers=2) == Counter(range(10))


def test_bad_dvc_roots_say_what_is_wrong(tmp_path: Path):
    with pytest.raises(DataError, match=r"unknown option\(s\) branch; a dvc:// root takes repo, rev, remote"):
        ShardLocation("dvc://data/shards?branch=main")
    with pytest.raises(DataError, match="no path inside the repository"):
        ShardLocation("dvc://?repo=/x")
    with pytest.raises(DataError, match=r"cannot read shards\.json under dvc://.*CloneError"):
        ShardLocation(f"dvc://data/shards?repo={tmp_path / 'nowhere'}").read_index()
