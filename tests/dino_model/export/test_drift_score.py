"""Recent captured images scored against the new model's own drift reference (dino_model/export/drift_score.py)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image, ImageOps

from dino_model.config import EvalConfig
from dino_model.data.datasets import ImageFolderDataset, Sample
from dino_model.data.transforms import eval_transform
from dino_model.export.drift_score import recent_captures
from dino_model.monitoring.drift import DriftReference, batch_drift, drift_path, l2_normalise, mmd2_unbiased

PER_CLASS = 4  # 10 digits x 4 = 40 images: one window of the tiny model's reference


def _copy_digits(train: Path, target: Path, *, invert: bool = False) -> Path:
    """PER_CLASS training digits of each class into `target/<class>/`, inverted (white on black) if asked."""
    for class_dir in sorted(p for p in train.iterdir() if p.is_dir()):
        (target / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.glob("*.png"))[:PER_CLASS]:
            if invert:
                ImageOps.invert(Image.open(image).convert("RGB")).save(target / class_dir.name / image.name)
            else:
                shutil.copy(image, target / class_dir.name / image.name)
    return target


@pytest.fixture(scope="module")
def scorer(tiny_checkpoint: Path, tiny_export: dict[str, Any], tiny_onnx: Path):
    """score(folders) with the tiny model's backbone, contract, config and reference."""
    from dino_model.config import config_from_dict
    from dino_model.export.drift_score import score_drift
    from dino_model.export.onnx import read_contract
    from dino_model.models.loading import load_backbone
    from dino_model.runtime.checkpoint import load_checkpoint

    backbone, _ = load_backbone(tiny_checkpoint)
    train_cfg = config_from_dict(load_checkpoint(tiny_checkpoint)["config"])
    contract, reference = read_contract(tiny_onnx), DriftReference.load(drift_path(tiny_onnx))
    return lambda folders: score_drift(backbone, contract, train_cfg, reference, folders)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> dict[str, Path]:
    train, root = tiny_checkpoint.parent.parent / "train", tmp_path_factory.mktemp("drift-score")
    return {"own": _copy_digits(train, root / "own"), "inverted": _copy_digits(train, root / "inverted", invert=True)}


def test_recent_captures_are_the_newest_days_first() -> None:
    days = ["2026-01-01", "2026-01-03", "2026-01-02", "not-a-day"]
    samples = [Sample(Path(f"captured/{day}/{i}.png"), 0) for day in days for i in range(3)]
    picked = [samples[i].path.parent.name for i in recent_captures(samples, 7)]
    assert picked == ["2026-01-03"] * 3 + ["2026-01-02"] * 3 + ["2026-01-01"]
    assert len(recent_captures(samples, 100)) == 12 and recent_captures(samples, 5) == recent_captures(samples, 5)


def test_images_like_the_training_data_score_low_and_inverted_ones_high(scorer, folders) -> None:
    own, inverted = scorer([folders["own"]]), scorer([folders["inverted"]])
    assert own["images"] == inverted["images"] == 40 and own["windows"] == 1
    assert own["ratio"] < 1.0, own
    assert inverted["ratio"] > max(2.0, 2 * own["ratio"]), (own, inverted)


def test_the_ratio_is_mmd2_unbiased_over_the_onnx_embeddings(scorer, folders, tiny_onnx: Path) -> None:
    """The score equals an independent computation: ONNX embeddings, the plain unbiased MMD^2, the threshold."""
    reference = DriftReference.load(drift_path(tiny_onnx))
    dataset = ImageFolderDataset(folders["inverted"], transform=eval_transform(EvalConfig(image_size=32,
                                                                                          resize_size=32)))
    images = np.stack([dataset[i][0].numpy() for i in range(len(dataset))])
    session = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    (embeddings,) = session.run(["embedding"], {"images": images})
    expected = mmd2_unbiased(l2_normalise(embeddings), reference.sample.astype(np.float64), reference.bandwidth)
    score = scorer([folders["inverted"]])
    assert score["mmd2"] == pytest.approx(expected, abs=1e-4 * reference.threshold)
    assert score["mmd2"] == pytest.approx(batch_drift(embeddings, reference)["mmd2_median"],
                                          abs=1e-4 * reference.threshold)
    assert score["ratio"] == pytest.approx(expected / reference.threshold, abs=1e-4)
    assert score["threshold"] == reference.threshold


def test_fewer_images_than_a_window_are_not_scored(scorer, tmp_path: Path, folders) -> None:
    (tmp_path / "few").mkdir()
    for image in sorted(folders["own"].rglob("*.png"))[:5]:
        shutil.copy(image, tmp_path / "few" / image.name)
    assert scorer([tmp_path / "few"]) is None and scorer([tmp_path / "absent"]) is None


def test_the_export_records_the_drift_of_the_newest_captures(tiny_checkpoint: Path, tiny_export: dict[str, Any],
                                                            digits_root: Path, scorer, folders,
                                                            tmp_path: Path) -> None:
    """Newest day first: the 40 own digits of the later day fill the window, the older inverted day is left out."""
    from dino_model.export.export_run import ExportOptions, export_checkpoint

    assert "captured_drift_ratio" not in tiny_export["metrics"]  # no captured images given: nothing added
    captured = tmp_path / "captured"
    shutil.copytree(folders["inverted"], captured / "2026-01-01")
    shutil.copytree(folders["own"], captured / "2026-01-02")
    for day in captured.iterdir():  # captured/<day>/<file>, no class folders
        for image in list(day.rglob("*.png")):
            image.rename(day / f"{image.parent.name}-{image.name}")
    options = ExportOptions(parity_images=str(digits_root / "val"), n_random=1, score_drift_on=[str(captured)])
    report = export_checkpoint(tiny_checkpoint, tmp_path / "model.onnx", options)
    own = scorer([folders["own"]])
    assert report["metrics"]["captured_drift_images"] == 40
    assert report["metrics"]["captured_drift_ratio"] == pytest.approx(own["ratio"], abs=1e-4)
    assert report["details"]["captured_drift"]["source"] == str(captured)
