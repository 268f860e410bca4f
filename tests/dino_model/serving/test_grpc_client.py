"""The gRPC client: evaluation preprocessing, concurrent batches, output files, k-NN labels, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch.nn.functional as F

from dino_model.config import EvalConfig
from dino_model.errors import ConfigError, ServingError
from dino_model.eval.features import extract_features
from dino_model.export.onnx import read_contract
from dino_model.models.loading import load_backbone
from dino_model.runtime.processes import free_ports
from dino_model.serving.client import EmbeddingClient
from dino_model.serving.inference import embed_images, predict_labels, write_embeddings

pytestmark = pytest.mark.triton


@pytest.fixture
def val_subset(digits_subset) -> Path:
    """Five images of each of the ten digit classes."""
    return digits_subset(5)


def test_the_contract_is_read_from_the_server(served, tiny_onnx: Path) -> None:
    client = EmbeddingClient(served.grpc_url)
    lineage = client.served.contract.lineage
    assert client.served.contract == read_contract(tiny_onnx).with_lineage(
        onnx_sha256=lineage["onnx_sha256"], lineage_verified=lineage["lineage_verified"],
        lineage_signature=lineage["lineage_signature"], lineage_key_id=lineage["lineage_key_id"])
    assert lineage["lineage_verified"] == str(tiny_onnx.with_suffix(".export.json"))
    assert lineage["lineage_signature"] and lineage["lineage_key_id"], "served as verified: signed by the export"
    assert client.served.max_batch_size == 16


def test_embeddings_equal_the_evaluation_pipeline(served, val_subset: Path, tiny_checkpoint: Path) -> None:
    """Same files through eval_transform + the PyTorch backbone (dino_model.eval.features) as the reference."""
    client = EmbeddingClient(served.grpc_url)
    result = embed_images([val_subset], client, batch_size=7, concurrency=3)
    backbone, _ = load_backbone(tiny_checkpoint)
    features, labels = extract_features(backbone, val_subset, EvalConfig(image_size=32, resize_size=32))
    np.testing.assert_allclose(result.embeddings, F.normalize(features, dim=1).numpy(), atol=1e-4, rtol=0)
    assert result.labels == [str(int(y)) for y in labels] and len(result.paths) == 50 and not result.skipped


def test_output_files_and_knn_labels(served, val_subset: Path, tmp_path: Path) -> None:
    client = EmbeddingClient(served.grpc_url)
    result = embed_images([val_subset], client, batch_size=16)
    index = write_embeddings(result, tmp_path / "index.npz")
    # k = 1 against itself: every image's nearest neighbour is the image (similarity 1), so its own label
    assert predict_labels(result, index, k=1) == result.labels
    result.predictions = predict_labels(result, index, k=20)
    np.testing.assert_array_equal(np.load(write_embeddings(result, tmp_path / "e.npy")), result.embeddings)
    saved = json.loads(write_embeddings(result, tmp_path / "e.json", model="dino").read_text())
    assert [i["path"] for i in saved["items"]] == result.paths
    assert [i["prediction"] for i in saved["items"]] == result.predictions
    np.testing.assert_allclose([i["embedding"] for i in saved["items"]], result.embeddings, atol=1e-6)
    with np.load(index) as data:
        assert list(data["classes"]) == [str(d) for d in range(10)] and (data["labels"] >= 0).all()


def test_a_corrupt_image_is_skipped_and_named(served, val_subset: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    good = sorted(val_subset.glob("3/*.png"))[:2]
    result = embed_images([bad, *good], EmbeddingClient(served.grpc_url))
    assert result.paths == [str(p) for p in good] and result.embeddings.shape == (2, 64)
    assert result.skipped[0]["path"] == str(bad) and "not a readable image" in result.skipped[0]["reason"]


def test_wrong_requests_get_clear_errors_and_the_server_stays_up(served) -> None:
    client = EmbeddingClient(served.grpc_url)
    images = np.zeros((2, 3, 32, 32), np.float32)
    with pytest.raises(ServingError, match="dtype float64; model 'dino' takes float32"):
        client.infer(images.astype(np.float64))
    with pytest.raises(ServingError, match=r"shape \[2, 3, 28, 28\]; model 'dino' takes \[B, 3, 32, 32\]"):
        client.infer(images[:, :, :28, :28])
    with pytest.raises(ServingError, match="batch of 17 images; model 'dino' takes 1 to 16"):
        client.infer(np.zeros((17, 3, 32, 32), np.float32))
    with pytest.raises(ServingError, match="model 'nosuch'"):
        _ = EmbeddingClient(served.grpc_url, "nosuch").served
    (port,) = free_ports(1)
    with pytest.raises(ServingError, match=f"cannot reach Triton at 127.0.0.1:{port} over gRPC"):
        _ = EmbeddingClient(f"127.0.0.1:{port}", timeout_s=5).served
    with pytest.raises(ConfigError, match="without a scheme"):
        EmbeddingClient(f"http://{served.grpc_url}")
    assert client.infer(images)["embedding"].shape == (2, 64) and served.running


def test_cli_infer(served, val_subset: Path, tmp_path: Path, capsys: pytest.CaptureFixture, run_cli) -> None:
    index = tmp_path / "index.npz"
    assert run_cli(["infer", str(val_subset), "--url", served.grpc_url, "--output", str(index)]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 50
    query = sorted(val_subset.glob("7/*.png"))[:2]
    out = tmp_path / "q.json"
    assert run_cli(["infer", *map(str, query), "--url", served.grpc_url, "--output", str(out),
                 "--knn-index", str(index), "--k", "1"]) == 0
    assert set(json.loads(capsys.readouterr().out)["predictions"].values()) == {"7"}
    (port,) = free_ports(1)
    assert run_cli(["infer", str(query[0]), "--url", f"127.0.0.1:{port}", "--output", str(out)]) == 2
    assert "cannot reach Triton" in capsys.readouterr().err
