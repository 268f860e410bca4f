"""The served model's weights, where the flywheel's retraining starts: resolved by version, checked by sha256."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest

from dino_model.errors import CheckpointError
from dino_model.serving import gate, served_weights
from dino_model.serving.served_weights import resolve_served_weights, verified_weights, weights_of_version


@pytest.fixture
def serving(monkeypatch: pytest.MonkeyPatch) -> dict:
    """What the fake server says: {"version": int | None}; the lineage read (which finishes deploys) is recorded."""
    state: dict = {"version": None, "lineage_reads": []}
    monkeypatch.setattr(gate, "served_lineage", lambda url, model, **kw: state["lineage_reads"].append(kw))
    monkeypatch.setattr(served_weights, "served_version", lambda url, model, **kw: state["version"])
    return state


def _weights(repository: Path, version: int, data: bytes = b"weights") -> Path:
    path = weights_of_version(repository, "dino", version)
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    return path


def test_nothing_served_means_starting_from_scratch(serving: dict, tmp_path: Path, caplog):
    caplog.set_level(logging.INFO, logger="dino_model.serving.served_weights")
    assert resolve_served_weights("triton:8001", "dino", tmp_path) is None
    assert "starts from scratch" in caplog.text
    assert serving["lineage_reads"] == [{"repository": tmp_path, "replicas": ()}]  # a killed deploy is finished first


def test_the_served_version_gives_its_weights_and_their_sha256(serving: dict, tmp_path: Path):
    _weights(tmp_path, 2, b"old")
    path = _weights(tmp_path, 3, b"served")
    serving["version"] = 3
    weights = resolve_served_weights("triton:8001", "dino", tmp_path)
    assert (weights.path, weights.version) == (str(path), 3)
    assert weights.sha256 == hashlib.sha256(b"served").hexdigest()
    assert verified_weights(weights.path, weights.sha256) == path


def test_a_version_deployed_without_weights_starts_from_scratch(serving: dict, tmp_path: Path, caplog):
    (tmp_path / "dino" / "4").mkdir(parents=True)
    serving["version"] = 4
    assert resolve_served_weights("triton:8001", "dino", tmp_path) is None
    assert "keeps no weights" in caplog.text


def test_weights_that_changed_or_went_are_refused(tmp_path: Path):
    path = _weights(tmp_path, 1, b"served")
    with pytest.raises(CheckpointError, match="not the"):
        verified_weights(path, hashlib.sha256(b"other").hexdigest())
    path.unlink()
    with pytest.raises(CheckpointError, match="are gone"):
        verified_weights(path, hashlib.sha256(b"served").hexdigest())
