"""Export to `.safetensors` for plain timm: strict load, equal outputs, metadata, model card, CLI."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from fixtures.export import DATA_VERSION
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dino_model.errors import ExportError
from dino_model.export.options import ExportOptions
from dino_model.export.safetensors import load_timm_backbone
from dino_model.export.safetensors_run import export_safetensors
from dino_model.models.loading import load_backbone

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
# what rebuilds the packaged tiny config's ViT (tiny.yaml: patch 4, 32 px, depth 2, width 64, 2 heads) in timm
TINY_KWARGS = {"num_classes": 0, "img_size": 32, "patch_size": 4, "depth": 2, "embed_dim": 64, "num_heads": 2,
               "global_pool": "token", "dynamic_img_size": True}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> dict[str, Any]:
    return export_safetensors(tiny_checkpoint, tmp_path_factory.mktemp("st") / "dino.safetensors")


def _metadata(path: str | Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata())


def _features(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(images)


def test_weights_load_strictly_into_plain_timm_with_equal_outputs(exported, tiny_checkpoint: Path) -> None:
    state = load_file(exported["path"])
    assert state and not any(k.startswith(("backbone.", "head.", "module.")) for k in state)
    ours, _ = load_backbone(tiny_checkpoint)
    images = torch.randn(3, 3, 32, 32)
    for dynamic in (True, False):  # timm's dynamic-size model and its plain fixed-size one
        model = timm.create_model("vit_tiny_patch16_224", **TINY_KWARGS | {"dynamic_img_size": dynamic})
        result = model.load_state_dict(state, strict=True)
        assert not result.missing_keys and not result.unexpected_keys
        assert type(model) is timm.models.vision_transformer.VisionTransformer
        torch.testing.assert_close(_features(model.eval(), images), _features(ours, images), rtol=0, atol=0)
    assert exported["reload_max_abs_diff"]["32"] == 0.0


def test_metadata_says_how_to_rebuild_prepare_and_trace(exported, tiny_checkpoint: Path) -> None:
    meta = _metadata(exported["path"])
    assert meta["dino.timm_name"] == "vit_tiny_patch16_224"
    assert json.loads(meta["dino.timm_kwargs"]) == TINY_KWARGS
    assert (meta["dino.image_size"], meta["dino.patch_size"], meta["dino.embed_dim"]) == ("32", "4", "64")
    assert (json.loads(meta["dino.mean"]), json.loads(meta["dino.std"])) == (IMAGENET_MEAN, IMAGENET_STD)
    assert meta["dino.arch"] == "vit_tiny" and meta["dino.pos_interpolation"] == "dino"
    assert meta["data_version"] == DATA_VERSION
    assert meta["checkpoint_sha256"] == hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()
    knn = json.loads((tiny_checkpoint.parent / "eval" / "knn.json").read_text())["metrics"]
    assert knn and json.loads(meta["metrics"]) == pytest.approx(knn)
    assert exported["sha256"] == hashlib.sha256(Path(exported["path"]).read_bytes()).hexdigest()


def test_model_card_describes_the_model_and_its_snippet_runs(exported, tiny_checkpoint: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    card = Path(exported["card"])
    assert card == Path(exported["path"]).with_suffix(".md")
    text = card.read_text()
    for row in ("| timm model | `vit_tiny_patch16_224` |", "| patch size | 4 |", "| embedding dim | 64 |",
                f"| data version | {DATA_VERSION} |"):
        assert row in text
    assert text.count("| image size | 32 ") == 1
    knn = json.loads((tiny_checkpoint.parent / "eval" / "knn.json").read_text())["metrics"]
    for name, value in knn.items():
        assert f"| {name} | {value:.4g} |" in text
    snippet, hub = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(snippet.strip().splitlines()) == 5 and "torch.hub.load(" in hub and "'dino_vit'" in hub
    monkeypatch.chdir(Path(exported["path"]).parent)  # the snippet names the file beside the card
    scope: dict[str, Any] = {}
    exec(snippet, scope)
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(_features(scope["model"], images), _features(load_backbone(tiny_checkpoint)[0], images))


def test_official_backbone_only_state_dict_exports(tmp_path: Path) -> None:
    # an official backbone-only file: plain ViT keys (cls_token, pos_embed, patch_embed.*, blocks.*, norm.*)
    official = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32, patch_size=8, depth=1).eval()
    torch.save(official.state_dict(), tmp_path / "dino_deitsmall8_pretrain.pth")
    result = export_safetensors(tmp_path / "dino_deitsmall8_pretrain.pth", tmp_path / "official.safetensors")
    meta = _metadata(result["path"])
    assert json.loads(meta["dino.timm_kwargs"]) == {"num_classes": 0, "img_size": 32, "patch_size": 8, "depth": 1,
                                                    "num_heads": 3, "global_pool": "token", "dynamic_img_size": True}
    assert meta["data_version"] == "" and "No evaluation report" in Path(result["card"]).read_text()
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(_features(load_timm_backbone(result["path"]), images), _features(official, images))


def test_resnet_backbone_exports(tmp_path: Path) -> None:
    official = timm.create_model("resnet18", num_classes=0).eval()
    torch.save(official.state_dict(), tmp_path / "resnet.pth")
    result = export_safetensors(tmp_path / "resnet.pth", tmp_path / "resnet.safetensors",
                                ExportOptions(image_size=64))
    meta = _metadata(result["path"])
    assert (meta["dino.timm_name"], json.loads(meta["dino.timm_kwargs"])) == ("resnet18", {"num_classes": 0})
    assert "dino.pos_interpolation" not in meta
    assert "| patch size | - (convolutional) |" in Path(result["card"]).read_text()
    images = torch.randn(2, 3, 64, 64)
    model = load_timm_backbone(result["path"], family="resnet")
    torch.testing.assert_close(_features(model, images), _features(official, images))
    with pytest.raises(ExportError, match="holds a resnet18 backbone, not a vit one"):
        load_timm_backbone(result["path"], family="vit")


def test_bad_requests_are_refused(tmp_path: Path, exported) -> None:
    with pytest.raises(ExportError, match=r"must end in \.safetensors"):
        export_safetensors(tmp_path / "missing.pth", tmp_path / "model.onnx")
    with pytest.raises(ExportError, match="fp16, opset only apply to the ONNX export"):
        export_safetensors(tmp_path / "missing.pth", tmp_path / "m.safetensors", ExportOptions(fp16=True, opset=17))
    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ExportError, match="carries no dino.timm_name, dino.timm_kwargs metadata"):
        load_timm_backbone(tmp_path / "foreign.safetensors")
    with pytest.raises(ExportError, match="does not fit timm.create_model"):
        load_timm_backbone(exported["path"], depth=3)


def test_cli_export_safetensors(tmp_path: Path, tiny_checkpoint: Path, run_cli, capsys: pytest.CaptureFixture) -> None:
    output = tmp_path / "cli.safetensors"
    code = run_cli(["export", "--format", "safetensors", "--checkpoint", str(tiny_checkpoint), "--output", str(output),
                    "--data-version", "given-md5"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["path"] == str(output) and output.with_suffix(".md").is_file()
    assert _metadata(output)["data_version"] == "given-md5"


@pytest.mark.parametrize(("flags", "named"), [
    (["--fp16"], "--fp16"),
    (["--patch-tokens"], "--patch-tokens"),
    (["--opset", "17", "--parity-random", "2"], "--opset, --parity-random"),
])
def test_cli_refuses_onnx_only_flags_with_safetensors(tmp_path: Path, tiny_checkpoint: Path, run_cli,
                                                      capsys: pytest.CaptureFixture, flags: list[str],
                                                      named: str) -> None:
    output = tmp_path / "m.safetensors"
    code = run_cli(["export", "--format", "safetensors", "--checkpoint", str(tiny_checkpoint), "--output", str(output),
                    *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"{named} only apply to --format onnx" in err[0]
    assert not output.exists()


def test_cli_onnx_stays_the_default(tmp_path: Path, run_cli, capsys: pytest.CaptureFixture) -> None:
    from dino_model.cli.main import build_parser

    args = build_parser().parse_args(["export", "--checkpoint", "c.pth", "--output", "m.onnx"])
    defaults = ExportOptions()
    assert (args.format, args.opset, args.parity_random, args.tolerance) == (
        "onnx", defaults.opset, defaults.n_random, defaults.tolerance)
    code = run_cli(["export", "--checkpoint", str(tmp_path / "c.pth"), "--output", str(tmp_path / "m.safetensors")])
    assert code == 2 and "add --format safetensors" in capsys.readouterr().err
