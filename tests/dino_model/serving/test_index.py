"""Similarity indexes: faiss answers equal a NumPy brute force, the manifest, the model check, a live server."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from dino_model.errors import ConfigError, DataError, ServingError
from dino_model.export.lineage import file_sha256
from dino_model.serving.index import (
    INDEX_FILE,
    MANIFEST_FILE,
    IndexOptions,
    ServedIdentity,
    build_index,
    check_same_model,
    default_nlist,
    load_index,
    neighbours,
    relative_paths,
    write_index,
)
from dino_model.serving.inference import EmbeddingResult, write_embeddings

MODEL = ServedIdentity(name="dino", version="3", onnx_sha256="ab" * 32, lineage_verified="runs/model.export.json",
                       lineage={"data_version": "d41d8cd98f00b204e9800998ecf8427e.dir"})


def clustered(n: int, dim: int = 16, clusters: int = 8, seed: int = 0) -> np.ndarray:
    """Points around random centres, not normalised (the index normalises)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)) * 3
    return (centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, dim))).astype(np.float32)


def brute_force(database: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k cosine similarities and ids, by sorting all similarities (float64)."""
    db = database / np.linalg.norm(database, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = q.astype(np.float64) @ db.astype(np.float64).T
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, ids, axis=1), ids


def names(n: int) -> list[str]:
    return [f"c{i % 3}/img{i}.png" for i in range(n)]


def test_exact_search_equals_a_brute_force_top_k() -> None:
    database, queries = clustered(500), clustered(40, seed=1)
    index = build_index(database, names(500), [""] * 500, model=MODEL)
    sims, ids = index.search(queries, 10)
    want_sims, want_ids = brute_force(database, queries, 10)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(sims, want_sims, atol=1e-5, rtol=0)


def test_ivf_searching_every_cell_equals_exact() -> None:
    database, queries = clustered(800), clustered(30, seed=2)
    exact = build_index(database, names(800), [""] * 800, model=MODEL)
    ivf = build_index(database, names(800), [""] * 800, model=MODEL, options=IndexOptions("ivf", nlist=16, nprobe=16))
    assert ivf.manifest["nlist"] == ivf.manifest["nprobe"] == 16
    exact_sims, exact_ids = exact.search(queries, 10)
    ivf_sims, ivf_ids = ivf.search(queries, 10)
    np.testing.assert_array_equal(ivf_ids, exact_ids)
    np.testing.assert_allclose(ivf_sims, exact_sims, atol=1e-5, rtol=0)
    # one cell of 16: fewer candidates, so never more similar than the exact answer
    few = build_index(database, names(800), [""] * 800, model=MODEL, options=IndexOptions("ivf", nlist=16, nprobe=1))
    few_sims, _ = few.search(queries, 10)
    assert (np.nan_to_num(few_sims, neginf=-2) <= exact_sims + 1e-5).all()


def test_round_trip_and_manifest(tmp_path: Path) -> None:
    database, queries = clustered(400), clustered(5, seed=3)
    labels = [f"c{i % 3}" for i in range(400)]
    built = build_index(database, names(400), labels, model=MODEL, options=IndexOptions("ivf", nlist=8, nprobe=3),
                        data_version="0123456789abcdef0123456789abcdef.dir", image_root="/data/images")
    folder = write_index(built, tmp_path / "index")
    assert sorted(p.name for p in folder.iterdir()) == [INDEX_FILE, MANIFEST_FILE]  # no temporaries left
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    assert {k: manifest[k] for k in ("format", "kind", "metric", "dimension", "count", "nlist", "nprobe",
                                     "data_version", "image_root")} == {
        "format": 2, "kind": "ivf", "metric": "inner_product", "dimension": 16, "count": 400, "nlist": 8,
        "nprobe": 3, "data_version": "0123456789abcdef0123456789abcdef.dir", "image_root": "/data/images"}
    assert manifest["model"] == {"name": "dino", "version": "3", "onnx_sha256": "ab" * 32,
                                 "lineage_verified": "runs/model.export.json",
                                 "lineage": {"data_version": "d41d8cd98f00b204e9800998ecf8427e.dir"}}
    assert manifest["paths"] == names(400) and manifest["labels"] == labels
    assert manifest["index_sha256"] == file_sha256(folder / INDEX_FILE)
    assert datetime.fromisoformat(manifest["built_at"]).tzinfo is not None
    loaded = load_index(folder)
    assert loaded.model == MODEL and loaded.index.nprobe == 3
    for got, want in zip(loaded.search(queries, 7), built.search(queries, 7), strict=True):
        np.testing.assert_array_equal(got, want)
    found = neighbours(loaded, queries, 7)
    _, ids = built.search(queries, 7)
    assert [[n["path"] for n in row] for row in found] == [[names(400)[i] for i in row] for row in ids]
    assert [[n["label"] for n in row] for row in found] == [[labels[i] for i in row] for row in ids]


def test_unlabelled_images_store_no_labels_and_fewer_rows_than_k(tmp_path: Path) -> None:
    index = build_index(clustered(3), ["a.png", "b.png", "c.png"], ["", "", ""], model=MODEL)
    assert "labels" not in index.manifest
    found = neighbours(index, clustered(2, seed=4), k=5)
    assert [len(row) for row in found] == [3, 3] and all("label" not in n for row in found for n in row)
    assert found[0][0]["similarity"] >= found[0][1]["similarity"] >= found[0][2]["similarity"]


def test_cosine_similarity_ignores_the_scale_of_vectors() -> None:
    database = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 5.0]], np.float32)
    index = build_index(database, ["x", "d", "y"], ["", "", ""], model=MODEL)
    sims, ids = index.search(np.array([[10.0, 0.0]], np.float32), 3)
    assert ids.tolist() == [[0, 1, 2]]
    np.testing.assert_allclose(sims, [[1.0, np.sqrt(0.5), 0.0]], atol=1e-6)


@pytest.mark.parametrize(("options", "message"), [
    (dict(kind="hnsw"), "index kind 'hnsw' is unknown"),
    (dict(kind="ivf", nlist=0), "nlist must be >= 1"),
    (dict(kind="ivf", nprobe=0), "nprobe must be >= 1"),
])
def test_bad_options_are_named(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        IndexOptions(**options)


def test_bad_input_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nlist=50 cells needs at least 50 embeddings, got 20"):
        build_index(clustered(20), names(20), [""] * 20, model=MODEL, options=IndexOptions("ivf", nlist=50))
    with pytest.raises(DataError, match="hold NaN"):
        build_index(np.full((2, 4), np.nan, np.float32), ["a", "b"], ["", ""], model=MODEL)
    with pytest.raises(DataError, match="3 embeddings but 2 paths"):
        build_index(clustered(3), ["a", "b"], ["", ""], model=MODEL)
    with pytest.raises(DataError, match="is not a similarity index"):
        load_index(tmp_path)
    index = build_index(clustered(10), names(10), [""] * 10, model=MODEL)
    with pytest.raises(DataError, match="the index holds 16-d embeddings; the queries are 8-d"):
        index.search(np.ones((1, 8), np.float32), 3)
    folder = write_index(index, tmp_path / "i")
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest | {"paths": names(9), "count": 9}))
    with pytest.raises(DataError, match="holds 10 16-d vectors but .* lists 9"):
        load_index(folder)


def test_default_nlist_keeps_39_points_per_cell() -> None:
    assert default_nlist(10_000) == 256 and default_nlist(100_000) == 1265 and default_nlist(10) == 1


def test_a_different_served_model_is_refused_in_one_line_naming_both(caplog: pytest.LogCaptureFixture) -> None:
    index = build_index(clustered(5), names(5), [""] * 5, model=MODEL)
    check_same_model(index, MODEL, where="idx")  # same model: nothing to say
    newer = ServedIdentity(name="dino", version="4", onnx_sha256="cd" * 32)
    with pytest.raises(ServingError) as refused:
        check_same_model(index, newer, where="idx")
    message = str(refused.value)
    assert "\n" not in message and "--allow-model-mismatch" in message
    assert f"'dino' version 3 (sha256 {'ab' * 6})" in message and f"'dino' version 4 (sha256 {'cd' * 6})" in message
    for other in (ServedIdentity("dino", "3", "cd" * 32), ServedIdentity("dino-b", "3", "ab" * 32)):
        with pytest.raises(ServingError):
            check_same_model(index, other, where="idx")
    check_same_model(index, newer, where="idx", allow_mismatch=True)
    assert "searching anyway" in caplog.text


def test_without_faiss_the_search_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)  # as in the client-only install
    with pytest.raises(ConfigError, match="similarity search needs faiss .*pip install faiss-cpu"):
        load_index(tmp_path)


def test_paths_are_stored_relative_to_the_inputs(tmp_path: Path) -> None:
    (tmp_path / "a" / "x").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    paths, root = relative_paths([str(tmp_path / "a" / "x" / "1.png"), str(tmp_path / "b" / "2.png")],
                                 [tmp_path / "a", tmp_path / "b" / "2.png"])
    assert (paths, root) == (["a/x/1.png", "b/2.png"], str(tmp_path.resolve()))
    assert relative_paths([str(tmp_path / "a" / "x" / "1.png")], [tmp_path / "a"]) == (["x/1.png"],
                                                                                         str(tmp_path / "a"))


def test_neighbours_go_into_npz_and_json_but_not_npy(tmp_path: Path) -> None:
    found = [[{"path": "x.png", "label": "3", "similarity": 1.0}, {"path": "y.png", "label": "5", "similarity": 0.5}],
             [{"path": "y.png", "label": "5", "similarity": 0.9}]]
    result = EmbeddingResult(["q1.png", "q2.png"], ["", ""], np.eye(2, 4, dtype=np.float32), neighbours=found)
    with np.load(write_embeddings(result, tmp_path / "e.npz")) as data:
        assert data["neighbour_paths"].tolist() == [["x.png", "y.png"], ["y.png", ""]]
        assert data["neighbour_labels"].tolist() == [["3", "5"], ["5", ""]]
        np.testing.assert_allclose(data["neighbour_similarities"], [[1.0, 0.5], [0.9, np.nan]])
    items = json.loads(write_embeddings(result, tmp_path / "e.json").read_text())["items"]
    assert [item["neighbours"] for item in items] == found
    with pytest.raises(DataError, match="holds embeddings only"):
        write_embeddings(result, tmp_path / "e.npy")


def test_infer_search_refuses_an_npy_output_before_calling_the_server(run_cli, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    code = run_cli(["infer", str(tmp_path), "--output", str(tmp_path / "e.npy"), "--search", str(tmp_path),
                    "--url", "127.0.0.1:1"])
    assert code == 2 and "--search writes neighbours to .npz or .json" in capsys.readouterr().err


@pytest.fixture
def val_subset(digits_subset) -> Path:
    """Four images of each of the ten digit classes."""
    return digits_subset(4)


@pytest.mark.triton
def test_a_served_model_finds_each_indexed_image_first(run_cli, served, tiny_onnx: Path, val_subset: Path,
                                                       tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "index"
    assert run_cli(["index", "build", str(val_subset), "--url", served.grpc_url, "--output", str(folder),
                    "--kind", "ivf", "--nlist", "4", "--nprobe", "4", "--data-version", "abc123.dir"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 40
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    assert manifest["model"]["name"] == "dino" and manifest["model"]["version"] == "1"
    assert manifest["model"]["onnx_sha256"] == file_sha256(tiny_onnx)
    assert manifest["model"]["lineage_verified"] == str(tiny_onnx.with_suffix(".export.json"))
    assert manifest["model"]["lineage"]["data_version"] == "digits-8-per-class.dir"
    assert (manifest["data_version"], manifest["dimension"], manifest["image_root"]) == ("abc123.dir", 64,
                                                                                          str(val_subset))
    assert manifest["paths"][:2] == ["0/" + p.name for p in sorted((val_subset / "0").glob("*.png"))[:2]]
    assert manifest["labels"] == [str(d) for d in range(10) for _ in range(4)]

    out = tmp_path / "search.json"
    assert run_cli(["infer", str(val_subset), "--url", served.grpc_url, "--output", str(out), "--search",
                    str(folder), "-k", "3"]) == 0
    items = json.loads(out.read_text())["items"]
    assert len(items) == 40
    for item in items:
        first = item["neighbours"][0]
        assert first["path"] == Path(item["path"]).relative_to(val_subset).as_posix(), item["path"]
        assert first["label"] == item["label"] and first["similarity"] == pytest.approx(1.0, abs=1e-4)
        assert len(item["neighbours"]) == 3

    capsys.readouterr()
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest | {"model": manifest["model"] | {"version": "7"}}))
    assert run_cli(["infer", str(val_subset), "--url", served.grpc_url, "--output", str(out), "--search",
                    str(folder)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "'dino' version 7" in error and "'dino' version 1" in error
    assert run_cli(["infer", str(val_subset / "3"), "--url", served.grpc_url, "--output", str(tmp_path / "s.npz"),
                    "--search", str(folder), "-k", "2", "--allow-model-mismatch"]) == 0
    with np.load(tmp_path / "s.npz") as data:
        assert data["neighbour_paths"].shape == (4, 2) and (data["neighbour_labels"][:, 0] == "3").all()
