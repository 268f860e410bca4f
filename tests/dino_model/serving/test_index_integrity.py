"""A similarity index is bound to its file: a changed index.faiss or a malformed manifest is refused before use.

Before, zeroed vectors in index.faiss answered with silently wrong neighbours, and a manifest whose
labels were shorter than its paths, or whose nprobe was not an integer, crashed with a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from dino_model.errors import ConfigError, DataError
from dino_model.runtime.digests import file_sha256
from dino_model.serving.index import (
    INDEX_FILE,
    MANIFEST_FILE,
    IndexOptions,
    ServedIdentity,
    build_index,
    load_index,
    neighbours,
    write_index,
)

MODEL = ServedIdentity(name="dino", version="3", onnx_sha256="ab" * 32)
N, DIM = 120, 8


def _vectors(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((N, DIM)).astype(np.float32)


@pytest.fixture
def exact(tmp_path: Path) -> Path:
    labels = [f"c{i % 3}" for i in range(N)]
    return write_index(build_index(_vectors(), [f"img{i}.png" for i in range(N)], labels, model=MODEL), tmp_path / "e")


@pytest.fixture
def ivf(tmp_path: Path) -> Path:
    built = build_index(_vectors(), [f"img{i}.png" for i in range(N)], [""] * N, model=MODEL,
                        options=IndexOptions("ivf", nlist=3, nprobe=2))
    return write_index(built, tmp_path / "i")


def _edit_manifest(folder: Path, **fields) -> dict:
    manifest = json.loads((folder / MANIFEST_FILE).read_text()) | fields
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    return manifest


def _refused(folder: Path, message: str) -> str:
    with pytest.raises(DataError, match=message) as refused:
        load_index(folder)
    text = str(refused.value)
    assert "\n" not in text and str(folder) in text
    return text


def test_the_manifest_records_the_index_files_digest(exact: Path) -> None:
    manifest = json.loads((exact / MANIFEST_FILE).read_text())
    assert manifest["format"] == 2 and manifest["index_sha256"] == file_sha256(exact / INDEX_FILE)
    assert load_index(exact).manifest["index_sha256"] == manifest["index_sha256"]


def test_zeroed_vectors_in_the_index_file_are_refused_not_searched(exact: Path) -> None:
    """Same count and width, so only the digest can tell: before, every query got the same wrong neighbours."""
    zeroed = faiss.IndexFlatIP(DIM)
    zeroed.add(np.zeros((N, DIM), np.float32))
    faiss.write_index(zeroed, str(exact / INDEX_FILE))
    text = _refused(exact, r"index\.faiss has sha256 .* but .*manifest\.json records .*: the index file changed")
    assert "dino-mlops index build" in text


def test_a_truncated_index_file_is_refused(exact: Path) -> None:
    data = (exact / INDEX_FILE).read_bytes()
    (exact / INDEX_FILE).write_bytes(data[: len(data) // 2])
    _refused(exact, "the index file changed after it was built")


@pytest.mark.parametrize(("fields", "message"), [
    ({"labels": [f"c{i}" for i in range(N - 1)]},
     rf"labels must be a list of {N} strings \(one per vector\), got a list of {N - 1} \(str\)"),
    ({"labels": "c0"}, rf"labels must be a list of {N} strings .*got a str"),
    ({"paths": [f"img{i}.png" for i in range(N - 1)] + [7]}, rf"paths must be a list of {N} strings .*\(int, str\)"),
    ({"paths": None}, "paths must be a list"),
    ({"count": "120"}, "count='120' must be an integer >= 0"),
    ({"dimension": 8.0}, "dimension=8.0 must be an integer >= 1"),
    ({"kind": "hnsw"}, "kind='hnsw' is not one of exact, ivf"),
    ({"metric": "l2"}, "metric='l2' is not 'inner_product'"),
    ({"model": "dino"}, "model='dino' must be an object"),
    ({"index_sha256": "00"}, "index_sha256='00' is not a sha256 hex digest"),
    ({"format": 3}, "format 3 is not 2"),
])
def test_a_malformed_manifest_is_one_line_naming_it(exact: Path, fields: dict, message: str) -> None:
    _edit_manifest(exact, **fields)
    text = _refused(exact, message)
    assert "is not a usable index manifest" in text


@pytest.mark.parametrize(("nprobe", "message"), [
    ("2", "nprobe='2' must be an integer in"),
    (2.5, "nprobe=2.5 must be an integer in"),
    (0, "nprobe=0 must be an integer in"),
    (True, "nprobe=True must be an integer in"),
    (4, r"nprobe=4 must be an integer in \[1, nlist=3\]"),
    (None, "nprobe=None must be an integer in"),
])
def test_nprobe_must_be_a_positive_integer_up_to_nlist(ivf: Path, nprobe, message: str) -> None:
    _edit_manifest(ivf, nprobe=nprobe)
    _refused(ivf, message)


def test_a_format_1_manifest_without_a_digest_asks_for_a_rebuild(exact: Path) -> None:
    manifest = json.loads((exact / MANIFEST_FILE).read_text())
    del manifest["index_sha256"]
    (exact / MANIFEST_FILE).write_text(json.dumps(manifest | {"format": 1}))
    text = _refused(exact, "format 1, written before manifests recorded the sha256 of index.faiss")
    assert "rebuild it with `dino-mlops index build`" in text


def test_a_manifest_of_another_kind_than_the_file_is_refused(exact: Path, ivf: Path) -> None:
    """An exact index file under an ivf manifest (digest updated): before, faiss raised a C++ traceback."""
    _edit_manifest(exact, kind="ivf", nlist=3, nprobe=1)
    _refused(exact, "is a flat index but .* says kind='ivf'")


def test_a_consistent_manifest_still_searches(exact: Path) -> None:
    found = neighbours(load_index(exact), _vectors()[:2], 3)
    assert [row[0]["path"] for row in found] == ["img0.png", "img1.png"]
    assert [row[0]["label"] for row in found] == ["c0", "c1"]


def test_infer_search_with_a_changed_index_is_one_line(exact: Path, run_cli, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    zeroed = faiss.IndexFlatIP(DIM)
    zeroed.add(np.zeros((N, DIM), np.float32))
    faiss.write_index(zeroed, str(exact / INDEX_FILE))
    out = tmp_path / "e.json"
    code = run_cli(["infer", str(tmp_path), "--output", str(out), "--search", str(exact), "--url", "127.0.0.1:1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "the index file changed after it was built" in err[0]
    assert not out.exists()


@pytest.mark.parametrize("options", [dict(nprobe=2.5), dict(nprobe="4"), dict(nprobe=True), dict(nlist=3.0)])
def test_build_options_must_be_integers(options: dict) -> None:
    with pytest.raises(ConfigError, match=r"must be >= 1, got .* takes an integer >= 1"):
        IndexOptions("ivf", **options)
