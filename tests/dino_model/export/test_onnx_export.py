"""ONNX export: one self-contained checked file, the recorded contract, and parity with PyTorch."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx.external_data_helper import uses_external_data

from dino_model.config import EvalConfig, ModelConfig
from dino_model.data.datasets import ImageFolderDataset
from dino_model.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform
from dino_model.errors import ExportError
from dino_model.export.contract import ModelContract
from dino_model.export.lineage import code_revision, read_metrics
from dino_model.export.onnx import EmbeddingModel, export_onnx, read_contract
from dino_model.export.parity import check_parity, parity_inputs
from dino_model.models.backbone import build_backbone
from dino_model.models.loading import load_backbone
from dino_model.runtime.checkpoint import load_checkpoint


def test_export_writes_one_checked_self_contained_file(tiny_export, tiny_onnx: Path) -> None:
    folder = tiny_onnx.parent
    assert sorted(p.name for p in folder.iterdir()) == ["model.drift.npz", "model.export.json", "model.fp16.onnx",
                                                         "model.onnx"]
    for name in ("model.onnx", "model.fp16.onnx"):
        proto = onnx.load(str(folder / name))
        onnx.checker.check_model(proto, full_check=True)
        assert not any(uses_external_data(t) for t in proto.graph.initializer)
        assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {18}
        (inp,) = proto.graph.input
        dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
        assert (inp.name, inp.type.tensor_type.elem_type, dims) == ("images", onnx.TensorProto.FLOAT,
                                                                     ["batch", 3, 32, 32])
        outputs = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim]
                   for o in proto.graph.output}
        assert outputs == {"embedding": ["batch", 64], "patch_tokens": ["batch", 64, 64]}
        assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in proto.graph.output)


def test_metadata_records_the_preprocessing_contract_and_lineage(tiny_onnx: Path, tiny_checkpoint: Path) -> None:
    contract = read_contract(tiny_onnx)
    assert (contract.image_size, contract.resize_size, contract.embed_dim) == (32, 32, 64)
    assert (contract.mean, contract.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert contract.num_patches == 64 and contract.outputs == ("embedding", "patch_tokens")
    assert contract.lineage["data_version"] == load_checkpoint(tiny_checkpoint)["data_version"] != ""
    assert contract.lineage["code_revision"] == code_revision()
    knn = json.loads((tiny_checkpoint.parent / "eval" / "knn.json").read_text())["metrics"]
    assert json.loads(contract.lineage["metrics"]) == pytest.approx(knn)
    assert read_contract(tiny_onnx.with_suffix(".fp16.onnx")).precision == "fp16"


def test_parity_report_covers_real_and_random_images(tiny_export) -> None:
    fp32, fp16 = tiny_export["details"]["parity"]["fp32"], tiny_export["details"]["parity"]["fp16"]
    assert fp32["n_images"] == {"real": 16, "random": 8}
    assert set(fp32["max_abs_diff"]) == {"real/embedding", "real/patch_tokens", "random/embedding",
                                         "random/patch_tokens"}
    assert fp32["passed"] and fp32["worst"] <= 1e-4
    assert fp16["passed"] and fp16["worst"] <= 1e-2
    assert tiny_export["metrics"]["parity_max_abs_diff_fp32"] == fp32["worst"]


@pytest.mark.parametrize("batch", [1, 3, 7])
def test_onnx_matches_an_independent_pytorch_reference(tiny_onnx: Path, tiny_checkpoint: Path, digits_root: Path,
                                                       batch: int) -> None:
    """CLS / ||CLS|| and patch tokens computed here from timm's forward_features, on real digits."""
    import onnxruntime as ort

    backbone, _ = load_backbone(tiny_checkpoint)
    dataset = ImageFolderDataset(digits_root / "val", transform=eval_transform(EvalConfig(image_size=32,
                                                                                          resize_size=32)))
    images = torch.stack([dataset[i][0] for i in range(batch)])
    with torch.inference_mode():
        tokens = backbone.forward_features(images).numpy()
    cls = tokens[:, 0] / np.linalg.norm(tokens[:, 0], axis=1, keepdims=True)
    session = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    embedding, patches = session.run(["embedding", "patch_tokens"], {"images": images.numpy()})
    np.testing.assert_allclose(embedding, cls, atol=1e-5)
    np.testing.assert_allclose(patches, tokens[:, 1:], atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, atol=1e-6)


def test_parity_check_catches_a_model_that_differs(tiny_onnx: Path, tiny_checkpoint: Path, digits_root: Path) -> None:
    backbone, _ = load_backbone(tiny_checkpoint)
    with torch.no_grad():
        backbone.norm.weight.mul_(1.5)  # a different model than the one exported
    contract = read_contract(tiny_onnx)
    inputs = parity_inputs(contract, image_dir=digits_root / "val", n_real=4, n_random=2)
    report = check_parity(EmbeddingModel(backbone, patch_tokens=True), tiny_onnx, inputs,
                          output_names=("embedding", "patch_tokens"))
    assert not report.passed and report.worst > 1e-2


def test_bad_requests_are_refused_before_exporting(tmp_path: Path) -> None:
    backbone, _ = build_backbone(ModelConfig(arch="vit_tiny", patch_size=4, img_size=32, depth=1, embed_dim=32,
                                             num_heads=2))
    contract = ModelContract(image_size=32, resize_size=32, embed_dim=32, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    with pytest.raises(ExportError, match="opset 12 is not supported"):
        export_onnx(EmbeddingModel(backbone), tmp_path / "m.onnx", contract, opset=12)
    resnet, _ = build_backbone(ModelConfig(arch="resnet18"))
    with pytest.raises(ExportError, match="patch tokens need a ViT backbone"):
        EmbeddingModel(resnet, patch_tokens=True)
    assert not list(tmp_path.iterdir())


def test_contract_round_trips_and_names_missing_keys() -> None:
    contract = ModelContract(image_size=224, resize_size=256, embed_dim=384, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                             num_patches=196, arch="vit_small", patch_size=16, outputs=("embedding", "patch_tokens"),
                             lineage={"data_version": "abc.dir"})
    assert ModelContract.from_properties(contract.to_properties(), source="x") == contract
    props = contract.to_properties()
    del props["dino.std"]
    with pytest.raises(ExportError, match=r"missing dino\.std"):
        ModelContract.from_properties(props, source="model.onnx")


def test_lineage_reads_git_and_metric_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True)
    if head.returncode == 0:
        assert code_revision() == head.stdout.strip()
    monkeypatch.setenv("DINO_CODE_REVISION", "built-from-tag-v1")
    assert code_revision() == "built-from-tag-v1"
    (tmp_path / "a.json").write_text(json.dumps({"metrics": {"knn_top1": 50.0, "x": 1}}))
    (tmp_path / "b.json").write_text(json.dumps({"metrics": {"knn_top1": 60.0}}))
    assert read_metrics([tmp_path / "a.json", tmp_path / "b.json"]) == {"knn_top1": 60.0, "x": 1.0}
    (tmp_path / "c.json").write_text("[1, 2]")
    with pytest.raises(ExportError, match="no `metrics` map"):
        read_metrics([tmp_path / "c.json"])


def test_cli_export_error_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture, run_cli) -> None:
    code = run_cli(["export", "--checkpoint", str(tmp_path / "missing.pth"), "--output", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "missing.pth does not exist" in err[0]
