"""One small trained and exported DINO model per test session, for the export and serving tests.

Training runs on 8 digits per class (one epoch of the packaged tiny config: a ViT of depth 2, width
64, patch 4, at 32 px), followed by the real k-NN evaluation so that lineage carries real metrics,
and the real export (fp32 with patch tokens, plus the fp16 variant). Results are cached under the
session's base temporary folder, so tests/dino_model/serving/conftest.py, which reuses these
fixtures, shares the same run.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

IMAGES_PER_CLASS = 8
DATA_VERSION = "digits-8-per-class.dir"


def trained_checkpoint(base: Path, digits_root: Path) -> Path:
    """base/tiny-dino/run/checkpoint.pth, trained once, with run/eval/knn.json beside it."""
    from dino_model.config import load_config
    from dino_model.eval.knn_run import run_knn_eval
    from dino_model.train.loop import fit

    root = base / "tiny-dino"
    checkpoint = root / "run" / "checkpoint.pth"
    if checkpoint.is_file():
        return checkpoint
    subset = root / "train"
    for class_dir in sorted(p for p in (digits_root / "train").iterdir() if p.is_dir()):
        (subset / class_dir.name).mkdir(parents=True, exist_ok=True)
        for image in sorted(class_dir.glob("*.png"))[:IMAGES_PER_CLASS]:
            shutil.copy(image, subset / class_dir.name / image.name)
    cfg = load_config("tiny", overrides=[f"data.root={subset}", f"train.output_dir={root / 'run'}",
                                         f"data.version={DATA_VERSION}", "train.batch_size=16"])
    fit(cfg)
    run_knn_eval(checkpoint, cfg.eval, train_dir=subset, val_dir=digits_root / "val")
    return checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, digits_root: Path) -> Path:
    return trained_checkpoint(tmp_path_factory.getbasetemp(), digits_root)


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, digits_root: Path
                ) -> dict[str, Any]:
    """The export report of model.onnx (+ model.fp16.onnx); details.files.<precision>.path are the files."""
    from dino_model.export.export_run import ExportOptions, export_checkpoint

    output = tmp_path_factory.getbasetemp() / "tiny-dino" / "export" / "model.onnx"
    report = output.with_suffix(".export.json")
    if report.is_file():
        return json.loads(report.read_text()) | {"report_path": str(report)}
    options = ExportOptions(patch_tokens=True, fp16=True, parity_images=str(digits_root / "val"))
    return export_checkpoint(tiny_checkpoint, output, options)


@pytest.fixture(scope="session")
def tiny_onnx(tiny_export: dict[str, Any]) -> Path:
    return Path(tiny_export["details"]["files"]["fp32"]["path"])


@pytest.fixture(scope="session")
def tiny_onnx_fp16(tiny_export: dict[str, Any]) -> Path:
    return Path(tiny_export["details"]["files"]["fp16"]["path"])


def _forge(source: Path, target: Path, **claims: str) -> Path:
    """A copy of `source` whose ONNX metadata claims `claims` (the graph and weights unchanged)."""
    import onnx

    proto = onnx.load(str(source))
    props = {p.key: p.value for p in proto.metadata_props} | claims
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(target))
    return target


def _exported_copy(tiny_onnx: Path, folder: Path) -> Path:
    """The exported file with its export report, copied to `folder` (as a pipeline artifact would be)."""
    folder.mkdir(parents=True)
    for name in ("model.onnx", "model.export.json"):
        shutil.copy(tiny_onnx.parent / name, folder / name)
    return folder / "model.onnx"


@pytest.fixture
def forge() -> Callable[..., Path]:
    """forge(source, target, **claims): a copy of an ONNX file whose metadata claims other lineage."""
    return _forge


@pytest.fixture
def exported_copy() -> Callable[[Path, Path], Path]:
    """exported_copy(tiny_onnx, folder): the exported file and its export report copied to `folder`."""
    return _exported_copy
