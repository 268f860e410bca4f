"""`data capture snapshot` on real git + DVC repositories: added, exact and near duplicates, failures."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dino_model.capture import CaptureSettings, CaptureStore, Sampler
from dino_model.errors import DataError
from dino_model.versioning import current_version, snapshot
from dino_model.versioning.captured import snapshot_captured
from dino_model.versioning.repo import git

NOON = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def pixels(images: Sequence[Image.Image]) -> np.ndarray:
    """A descriptor that sees re-encodings as the same image: centred 8x8 grey pixels."""
    rows = [np.asarray(im.convert("L").resize((8, 8), Image.BILINEAR), dtype=np.float32).ravel() for im in images]
    out = np.stack(rows)
    return out - out.mean(axis=1, keepdims=True)


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def random_image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(100 + seed).integers(0, 256, (8, 8, 3), dtype=np.uint8))


def capture(store: Path, images: list[bytes], *, when: datetime = NOON) -> None:
    with Sampler(CaptureSettings(enabled=True, store=str(store), rate=1.0)) as sampler:
        for i, data in enumerate(images):
            assert sampler.offer(data, model_version="1", drift_score=0.3, now=when + timedelta(seconds=i))
    assert sampler.counts["stored"] == len(images)


def test_new_images_become_a_committed_version_and_duplicates_are_dropped(repo: Path, tmp_path: Path) -> None:
    first = snapshot(repo, "the set")
    in_set = repo / "data" / "toy" / "train" / "a"
    new = [random_image(i) for i in range(2)]
    capture(tmp_path / "store", [
        (in_set / "0.png").read_bytes(),  # exactly a file of the set
        encoded(Image.open(in_set / "1.png"), "PNG", compress_level=1),  # the same pixels, other bytes
        encoded(new[0], "PNG"), encoded(new[1], "PNG"),
        encoded(new[1].convert("L").convert("RGB"), "BMP"),  # a grey copy of a new one: near duplicate
    ])
    report = snapshot_captured(repo, CaptureStore(tmp_path / "store"), pixels, similarity=0.95)

    assert report.considered == 5
    assert report.counts() == {"exact duplicate": 1, "near duplicate": 2}
    near = [d for d in report.dropped if d["reason"] == "near duplicate"]
    assert {d["neighbour"].split("/")[1] for d in near} == {"toy", "captured"}
    assert len(report.added) == 2 and all(p.startswith("data/captured/2026-12-01/") for p in report.added)
    version = current_version(repo)
    assert version.md5 == report.version.md5 != first.md5 and version.nfiles == first.nfiles + 3  # + records.json
    assert git(repo, "log", "-1", "--format=%s").startswith("data: 2 captured images (2026-12-01), 3 dropped")
    assert git(repo, "status", "--porcelain") == ""
    records = json.loads((repo / "data" / "captured" / "2026-12-01" / "records.json").read_text())
    assert [(r["model_version"], r["drift_score"]) for r in records] == [("1", 0.3)] * 2

    again = snapshot_captured(repo, CaptureStore(tmp_path / "store"), pixels)  # nothing new: no new version
    assert again.added == [] and again.version is None and current_version(repo).md5 == version.md5


def test_a_failed_push_leaves_data_and_history_as_they_were(repo: Path, tmp_path: Path, fingerprint) -> None:
    snapshot(repo, "the set")
    before, head = fingerprint(repo), git(repo, "rev-parse", "HEAD")
    capture(tmp_path / "store", [encoded(random_image(i), "PNG") for i in range(3)])
    with pytest.raises(DataError, match="nope"):
        snapshot_captured(repo, CaptureStore(tmp_path / "store"), pixels, remote="nope")
    assert fingerprint(repo) == before and git(repo, "rev-parse", "HEAD") == head
    assert not (repo / "data" / "captured").exists()


def test_days_choose_what_is_taken(repo: Path, tmp_path: Path) -> None:
    snapshot(repo, "the set")
    capture(tmp_path / "store", [encoded(random_image(0), "PNG")])
    capture(tmp_path / "store", [encoded(random_image(1), "PNG")], when=NOON + timedelta(days=1))
    report = snapshot_captured(repo, CaptureStore(tmp_path / "store"), pixels, days=["2026-12-02"])
    assert [p.split("/")[2] for p in report.added] == ["2026-12-02"]
    assert not (repo / "data" / "captured" / "2026-12-01").exists()


def test_a_trained_model_finds_edited_copies(repo: Path, tmp_path: Path, tiny_checkpoint: Path,
                                             digits_root: Path) -> None:
    """The copy-detection descriptor of a real checkpoint, threshold calibrated on the set: a re-encoded
    digit is a near duplicate, digits of another class are kept."""
    from dino_model.versioning.captured import checkpoint_embedder

    digits = sorted((digits_root / "val").rglob("*.png"))
    target = repo / "data" / "digits" / "val"
    for path in digits[:40]:
        (target / path.parent.name).mkdir(parents=True, exist_ok=True)
        (target / path.parent.name / path.name).write_bytes(path.read_bytes())
    snapshot(repo, "with digits")
    original = Image.open(digits[0]).convert("RGB")
    copy = encoded(original, "JPEG", quality=90)
    unseen = [encoded(Image.open(p).convert("RGB"), "JPEG", quality=90) for p in digits[-3:]]
    capture(tmp_path / "store", [copy, *unseen])
    report = snapshot_captured(repo, CaptureStore(tmp_path / "store"), checkpoint_embedder(tiny_checkpoint))
    assert [(d["reason"], d["neighbour"]) for d in report.dropped] == [
        ("near duplicate", f"data/digits/val/{digits[0].parent.name}/{digits[0].name}")], report.to_dict()
    assert len(report.added) == 3 and 0.9 < report.threshold < 1.0


@pytest.mark.triton
def test_the_served_model_finds_copies_where_no_checkpoint_is_at_hand(repo: Path, tmp_path: Path, tiny_onnx: Path,
                                                                       digits_root: Path, start_server) -> None:
    """The retraining CronJob's way: near duplicates by the served model's embeddings over gRPC."""
    from fixtures.triton import write_cpu_repository

    from dino_model.versioning.captured import served_embedder

    digits = sorted((digits_root / "val").rglob("*.png"))
    target = repo / "data" / "digits" / "val"
    for path in digits[:40]:
        (target / path.parent.name).mkdir(parents=True, exist_ok=True)
        (target / path.parent.name / path.name).write_bytes(path.read_bytes())
    snapshot(repo, "with digits")
    server = start_server(write_cpu_repository(tiny_onnx, tmp_path / "models"))
    copy = encoded(Image.open(digits[0]).convert("RGB"), "JPEG", quality=90)
    unseen = [encoded(Image.open(p).convert("RGB"), "JPEG", quality=90) for p in digits[-3:]]
    capture(tmp_path / "store", [copy, *unseen])
    report = snapshot_captured(repo, CaptureStore(tmp_path / "store"), served_embedder(server.grpc_url))
    assert [(d["reason"], d["neighbour"]) for d in report.dropped] == [
        ("near duplicate", f"data/digits/val/{digits[0].parent.name}/{digits[0].name}")], report.to_dict()
    assert len(report.added) == 3
