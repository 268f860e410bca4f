"""Data versions by reference: resolved by the data step without reading the data, materialised by md5 from
the remote (a folder, or a real S3 API: moto's server) into a cache that each folder fills once."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dino_model.errors import DataError
from dino_model.versioning.clone import resolve_data_reference
from dino_model.versioning.mirror import materialize, stream_root
from dino_model.versioning.reference import DataReference
from dino_model.versioning.remotes import add_remote
from dino_model.versioning.repo import git
from dino_model.versioning.sync import snapshot


def _publish(repo: Path, tmp_path: Path) -> str:
    """The repository's data version and DVC config, committed and pushed to a bare git repository; its git URL."""
    snapshot(repo, "first data version")
    git(repo, "add", ".dvc/config")
    git(repo, "commit", "-qm", "remote", "--allow-empty")
    bare = tmp_path / "data.git"
    git(tmp_path, "clone", "-q", "--bare", str(repo), str(bare))
    git(repo, "remote", "add", "origin", str(bare))
    return f"file://{bare}"


def _files(root: Path, sub: str = "") -> dict[str, bytes]:
    base = root / sub if sub else root
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(base.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def _listing_bytes(repo: Path, ref: DataReference) -> int:
    """Size of the version's file listing (the .dir object), which every fill reads once."""
    digest = ref.md5.removesuffix(".dir")
    return (repo / ".dvc" / "cache" / "files" / "md5" / digest[:2] / f"{digest[2:]}.dir").stat().st_size


@pytest.fixture
def s3_repo(repo: Path, s3_env, tmp_path: Path, write_images) -> tuple[Path, str, str]:
    """`repo` with train/ and val/ folders whose default DVC remote is a prefix of the moto bucket; pushed."""
    write_images(repo / "data" / "val", {"a": 2, "b": 1}, seed=3)
    prefix = f"dvc-{tmp_path.name}"
    add_remote(repo, "store", s3_env.url(prefix), endpoint_url=s3_env.endpoint, default=True)
    url = _publish(repo, tmp_path)
    return repo, url, prefix


def test_the_reference_is_small_and_names_the_remote_and_version_only(s3_repo, s3_env, tmp_path):
    repo, url, prefix = s3_repo
    before = s3_env.objects(prefix)
    ref = resolve_data_reference(url, "", tmp_path / "step")
    assert ref.md5 == git(repo, "show", "HEAD:data.dvc").split("md5: ")[1].split()[0]
    assert (ref.remote_url, ref.endpoint_url) == (s3_env.url(prefix), s3_env.endpoint)
    assert ref.nfiles == 9 and ref.size == sum(len(b) for b in _files(repo / "data").values())
    assert ref.git_rev == git(repo, "rev-parse", "HEAD~1").strip() != git(repo, "rev-parse", "HEAD").strip()
    assert ref.repository == url  # the commit that recorded the version, not the later config commit
    assert len(ref.to_json()) < 400
    assert DataReference.from_json(ref.to_json()) == ref
    assert not any(p.suffix == ".png" for p in (tmp_path / "step").rglob("*"))  # no image was fetched
    assert s3_env.objects(prefix) == before


def test_commits_that_leave_the_data_alone_give_the_same_reference(s3_repo, tmp_path):
    repo, url, _ = s3_repo
    first = resolve_data_reference(url, "", tmp_path / "a")
    (repo / "README.md").write_text("notes\n")
    git(repo, "add", "README.md")
    git(repo, "commit", "-qm", "docs only")
    git(repo, "push", "-q", "origin", "main")
    again = resolve_data_reference(url, "", tmp_path / "b")
    assert again.to_json() == first.to_json()  # so the cache key of every consumer repeats


def test_materialised_from_s3_one_folder_at_a_time_each_read_once(s3_repo, s3_env, tmp_path):
    repo, url, _ = s3_repo
    ref = resolve_data_reference(url, "", tmp_path / "step")
    cache = tmp_path / "cache"
    val = materialize(ref, subdirs=["val"], root=cache)
    assert _files(val.path) == _files(repo / "data", "val")  # train/ was not read
    val_bytes = sum(len(b) for b in _files(repo / "data", "val").values())
    listing = _listing_bytes(repo, ref)
    assert (val.bytes_read, val.files_read, val.reused) == (val_bytes + listing, 3, False)
    train = materialize(ref, subdirs=["toy", "val"], root=cache)
    assert train.bytes_read == ref.size - val_bytes + listing and train.files_read == 6  # only what was missing
    assert _files(train.path) == _files(repo / "data")
    again = materialize(ref, root=cache)
    assert again.files_read == 0 and _files(again.path) == _files(repo / "data")
    assert materialize(ref, subdirs=["val"], root=cache).reused
    other = materialize(ref, root=tmp_path / "pod-local")  # another pod without the shared claim
    assert other.bytes_read == ref.size + listing and not other.reused


def test_a_bad_reference_or_a_missing_remote_is_one_line(s3_repo, s3_env, tmp_path):
    _, url, _ = s3_repo
    ref = resolve_data_reference(url, "", tmp_path / "step")
    with pytest.raises(DataError, match="not a DVC directory md5"):
        DataReference(md5="abc", remote_url=ref.remote_url)
    with pytest.raises(DataError, match="names no DVC remote"):
        DataReference(md5=ref.md5, remote_url="")
    with pytest.raises(DataError, match="not JSON"):
        DataReference.from_json("train")
    with pytest.raises(DataError, match="has no folder nope"):
        materialize(ref, subdirs=["nope"], root=tmp_path / "c1")
    elsewhere = DataReference(**{**ref.__dict__, "remote_url": s3_env.url("no-such-prefix")})
    with pytest.raises(DataError, match="not in the local cache nor in DVC remote") as info:
        materialize(elsewhere, root=tmp_path / "c2")
    assert "\n" not in str(info.value)
    with pytest.raises(DataError, match="names no default DVC remote|set the pipeline's dvc_remote"):
        local_only = tmp_path / "plain"
        shutil.copytree(s3_repo[0], local_only)
        git(local_only, "remote", "remove", "origin")
        resolve_data_reference(str(local_only), "", tmp_path / "d", remote_url="")
        raise DataError("set the pipeline's dvc_remote")  # reached only if the remote resolved


def test_a_local_remote_folder_works_as_on_kfp_local(repo, tmp_path):
    url = _publish(repo, tmp_path)
    ref = resolve_data_reference(url, "", tmp_path / "step", remote_url=str(repo / ".dvc-remote"))
    got = materialize(ref, subdirs=["toy"], root=tmp_path / "cache")
    assert _files(got.path) == _files(repo / "data") and got.files_read == 6
    with pytest.raises(DataError, match="inside the repository"):
        resolve_data_reference(url, "", tmp_path / "again")  # the clone's own .dvc-remote: no step could read it


def test_shards_stream_from_s3_without_copying_the_version(repo, s3_env, tmp_path, write_images):
    from dino_model.data.shard_location import ShardLocation
    from dino_model.data.shards import pack_folder

    shutil.rmtree(repo / "data")
    write_images(tmp_path / "images", {"a": 4, "b": 4}, seed=5)
    index = pack_folder(tmp_path / "images", repo / "data" / "train", max_per_shard=3)
    add_remote(repo, "store", s3_env.url(f"shards-{tmp_path.name}"), endpoint_url=s3_env.endpoint, default=True)
    url = _publish(repo, tmp_path)
    ref = resolve_data_reference(url, "", tmp_path / "step")
    root = stream_root(ref, "train", root=tmp_path / "cache")
    location = ShardLocation(root)
    streamed = location.read_index()
    assert [s.name for s in streamed.shards] == [s.name for s in index.shards] and len(index.shards) == 3
    with location.open(index.shards[1].name) as f:
        assert f.read() == (repo / "data" / "train" / index.shards[1].name).read_bytes()
    assert not list((tmp_path / "cache").rglob("*.tar"))  # nothing was materialised as files


def test_training_reads_a_folder_from_the_cache_and_shards_as_a_stream(repo, tmp_path, write_images, monkeypatch):
    from dino_model.data.shards import pack_folder
    from dino_model.versioning.mirror import LOCAL_CACHE_ENV, SHARED_CACHE_ENV, cache_root, training_root

    monkeypatch.setenv(SHARED_CACHE_ENV, str(tmp_path / "no-claim"))  # not mounted: pod-local it is
    monkeypatch.setenv(LOCAL_CACHE_ENV, str(tmp_path / "pod"))
    assert cache_root() == tmp_path / "pod"
    write_images(tmp_path / "images", {"a": 3}, seed=2)
    pack_folder(tmp_path / "images", repo / "data" / "shards")
    url = _publish(repo, tmp_path)
    ref = resolve_data_reference(url, "", tmp_path / "step", remote_url=str(repo / ".dvc-remote")).to_json()
    folder = training_root(ref, "toy/train")
    assert Path(folder).is_relative_to(tmp_path / "pod") and len(list(Path(folder).rglob("*.png"))) == 6
    stream = training_root(ref, "shards")
    assert stream.startswith("dvc://data/shards?repo=") and not (Path(folder).parents[1] / "shards").exists()
    (tmp_path / "claim").mkdir()
    monkeypatch.setenv(SHARED_CACHE_ENV, str(tmp_path / "claim"))
    assert cache_root() == tmp_path / "claim"  # a mounted, writable shared claim wins


def test_captured_images_become_extra_roots_only_when_the_version_holds_them(repo, tmp_path, write_images,
                                                                             monkeypatch):
    from dino_model.versioning.mirror import LOCAL_CACHE_ENV, SHARED_CACHE_ENV, extra_training_roots, holds_folder

    monkeypatch.setenv(SHARED_CACHE_ENV, str(tmp_path / "no-claim"))
    monkeypatch.setenv(LOCAL_CACHE_ENV, str(tmp_path / "pod"))
    write_images(repo / "data" / "captured" / "2024-05-01", {"": 2}, seed=3)
    url = _publish(repo, tmp_path)
    ref = resolve_data_reference(url, "", tmp_path / "step", remote_url=str(repo / ".dvc-remote"))
    assert holds_folder(ref, "captured") and holds_folder(ref, "toy") and not holds_folder(ref, "capt")
    assert not holds_folder(ref, "") and not holds_folder(ref, "elsewhere")
    (extra,) = extra_training_roots(ref.to_json(), "captured")
    assert Path(extra).is_relative_to(tmp_path / "pod") and len(list(Path(extra).rglob("*.png"))) == 2
    assert extra_training_roots(ref.to_json(), "") == extra_training_roots(ref.to_json(), "elsewhere") == []
