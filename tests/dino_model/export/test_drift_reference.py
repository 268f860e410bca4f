"""The export's drift reference: the training images' embeddings, recorded in the report, copied into Triton."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from dino_model.config import EvalConfig
from dino_model.data.datasets import ImageFolderDataset
from dino_model.data.transforms import eval_transform
from dino_model.export.lineage import file_sha256
from dino_model.monitoring.drift import DriftReference, drift_path
from dino_model.triton.config import RepositoryOptions
from dino_model.triton.repository import DRIFT_FILE, write_model_repository


def test_export_records_a_reference_of_the_training_embeddings(tiny_export, tiny_onnx: Path,
                                                               tiny_checkpoint: Path) -> None:
    record = tiny_export["details"]["drift"]
    path = drift_path(tiny_onnx)
    assert record["path"] == str(path) and record["sha256"] == file_sha256(path)
    reference = DriftReference.load(path)
    train = tiny_checkpoint.parent.parent / "train"  # the fixture's 80 training digits
    assert record["images"] == 80 == len(reference.sample) and record["source"] == str(train)
    assert reference.window == 40 == record["window"]  # half the sample: too few images for 64
    assert record["threshold"] == reference.threshold > 0
    # every sampled row is the (unit) ONNX embedding of one training image, computed independently
    dataset = ImageFolderDataset(train, transform=eval_transform(EvalConfig(image_size=32, resize_size=32)))
    images = np.stack([dataset[i][0].numpy() for i in range(len(dataset))])
    session = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    (onnx_embeddings,) = session.run(["embedding"], {"images": images})
    diff = np.abs(reference.sample[:, None, :] - onnx_embeddings[None, :, :]).max(-1)
    assert diff.min(1).max() < 1e-4
    assert len(set(diff.argmin(1).tolist())) == 80


def test_repository_version_carries_the_reference_when_present(tiny_export, tiny_onnx: Path, tmp_path: Path,
                                                               exported_copy) -> None:
    opts = RepositoryOptions(flavour="cpu", max_batch_size=4, preferred_batch_sizes=[])
    written = write_model_repository(tiny_onnx, tmp_path / "repo", opts)
    copied = Path(written["version_dir"]) / DRIFT_FILE
    assert file_sha256(copied) == tiny_export["details"]["drift"]["sha256"]
    bare = exported_copy(tiny_onnx, tmp_path / "bare")  # the ONNX file and its report, no reference
    written = write_model_repository(bare, tmp_path / "repo", opts)
    assert not (Path(written["version_dir"]) / DRIFT_FILE).exists()


def test_the_reference_samples_every_training_folder_and_leaves_out_one_not_here(tiny_checkpoint: Path,
                                                                                 tmp_path: Path) -> None:
    """A retrained model's reference holds train/ and captured/ (data.extra_roots), in proportion."""
    import shutil
    from types import SimpleNamespace

    from dino_model.config import config_from_dict
    from dino_model.export.export_run import write_drift_reference
    from dino_model.models.loading import load_backbone
    from dino_model.runtime.checkpoint import load_checkpoint

    train = tiny_checkpoint.parent.parent / "train"
    captured = tmp_path / "captured" / "2024-05-01"
    captured.mkdir(parents=True)
    for image in sorted(train.rglob("*.png"))[:6]:
        shutil.copy(image, captured / image.name)
    backbone, _ = load_backbone(tiny_checkpoint)
    cfg = config_from_dict(load_checkpoint(tiny_checkpoint)["config"])
    contract = SimpleNamespace(image_size=32, resize_size=32)
    folders = [str(train), str(tmp_path / "captured"), str(tmp_path / "gone")]
    record = write_drift_reference(backbone, contract, cfg, tmp_path / "model.onnx", images=folders)
    assert record["images"] == 80 + 6 == len(DriftReference.load(record["path"]).sample)
    assert record["source"] == f"{train}, {tmp_path / 'captured'}"


def test_repository_version_carries_the_backbone_weights_when_exported_beside_the_file(
        tiny_onnx: Path, tiny_checkpoint: Path, tmp_path: Path, exported_copy) -> None:
    from dino_model.export.safetensors_run import export_safetensors
    from dino_model.triton.repository import WEIGHTS_FILE, weights_path

    onnx = exported_copy(tiny_onnx, tmp_path / "export")
    written = export_safetensors(tiny_checkpoint, weights_path(onnx))
    opts = RepositoryOptions(flavour="cpu", max_batch_size=4, preferred_batch_sizes=[])
    version = Path(write_model_repository(onnx, tmp_path / "repo", opts)["version_dir"])
    assert file_sha256(version / WEIGHTS_FILE) == written["sha256"]
