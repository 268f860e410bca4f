"""The config an evaluation runs with: the checkpoint's saved config, then --config files, then overrides."""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import pytest
import torch

from dino_model.cli.main import main
from dino_model.errors import CheckpointError
from dino_model.eval.settings import checkpoint_config, pipeline_eval_config

IMAGES_PER_CLASS = 6


@pytest.fixture
def trained_32px(tiny_cfg, digits_root: Path, tmp_path: Path) -> Path:
    """One epoch of the tiny config (32 px) on a few digits; its saved config names the k-NN folders."""
    from dino_model.train.loop import fit

    for split in ("train", "val"):
        for class_dir in sorted(p for p in (digits_root / split).iterdir() if p.is_dir()):
            (tmp_path / "digits" / split / class_dir.name).mkdir(parents=True)
            for image in sorted(class_dir.glob("*.png"))[:IMAGES_PER_CLASS]:
                shutil.copy(image, tmp_path / "digits" / split / class_dir.name / image.name)
    tiny_cfg.data.root = tiny_cfg.data.knn_train = str(tmp_path / "digits" / "train")
    tiny_cfg.data.knn_val = str(tmp_path / "digits" / "val")
    tiny_cfg.train.batch_size = 16
    fit(tiny_cfg)
    return Path(tiny_cfg.train.output_dir) / "checkpoint.pth"


@pytest.fixture
def input_sizes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(H, W) of every batch the k-NN evaluation feeds its backbone."""
    import dino_model.eval.knn_run as knn_run

    sizes: list[tuple[int, int]] = []
    extract = knn_run.extract_features

    def spy(backbone, *args, **kwargs):
        handle = backbone.register_forward_pre_hook(lambda _m, inputs: sizes.append(tuple(inputs[0].shape[-2:])))
        try:
            return extract(backbone, *args, **kwargs)
        finally:
            handle.remove()

    monkeypatch.setattr(knn_run, "extract_features", spy)
    return sizes


def _eval_knn(capsys: pytest.CaptureFixture, *argv: str) -> dict:
    code = main(["eval", "knn", *argv])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def test_eval_knn_without_config_runs_at_the_trained_resolution(trained_32px: Path, input_sizes, capsys,
                                                               tmp_path: Path) -> None:
    result = _eval_knn(capsys, "--checkpoint", str(trained_32px), "--output", str(tmp_path / "knn.json"))
    assert input_sizes and set(input_sizes) == {(32, 32)}  # not the 224 px of the defaults
    details = json.loads((tmp_path / "knn.json").read_text())["details"]
    assert details["image_size"] == 32 and details["resize_size"] == 32
    assert details["val_dir"] == str(tmp_path / "digits" / "val")  # data.knn_val of the saved config
    assert sorted(result["metrics"]) == sorted(["knn_top1", "knn_top1_k10", "knn_top1_k20", "knn_top5_k10",
                                                "knn_top5_k20"])  # the tiny config's eval.knn_k


def test_an_eval_override_changes_what_runs(trained_32px: Path, input_sizes, capsys, tmp_path: Path) -> None:
    result = _eval_knn(capsys, "--checkpoint", str(trained_32px), "--output", str(tmp_path / "knn.json"),
                       "eval.knn_k=[3]", "eval.image_size=16", "eval.resize_size=16")
    assert sorted(result["metrics"]) == ["knn_top1", "knn_top1_k3", "knn_top5_k3"]
    assert json.loads((tmp_path / "knn.json").read_text())["details"]["k"] == 3
    assert set(input_sizes) == {(16, 16)}


@pytest.fixture
def saved_tiny(tmp_path: Path) -> Path:
    """A checkpoint holding only the tiny config (32 px, k in [10, 20]); no weights are needed here."""
    from dino_model.config import load_config

    path = tmp_path / "saved" / "checkpoint.pth"
    path.parent.mkdir()
    torch.save({"config": load_config("tiny").to_dict()}, path)
    return path


def test_files_layer_over_the_saved_config_and_overrides_over_both(saved_tiny: Path, tmp_path: Path) -> None:
    layer = tmp_path / "layer.yaml"
    layer.write_text("eval:\n  knn_k: [5]\n  batch_size: 7\n")
    cfg = checkpoint_config(saved_tiny)
    assert (cfg.model.img_size, cfg.eval.image_size, cfg.eval.knn_k) == (32, 32, [10, 20])
    cfg = checkpoint_config(saved_tiny, [layer], ["eval.knn_k=[9]"])
    assert cfg.eval.knn_k == [9] and cfg.eval.batch_size == 7  # override, then the file
    assert cfg.eval.image_size == 32 and cfg.model.arch == "vit_tiny"  # the rest stays the checkpoint's


def test_a_missing_checkpoint_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint_config(tmp_path / "missing.pth")


def test_the_pipeline_component_config_is_the_checkpoint_plus_the_run_overrides(saved_tiny: Path) -> None:
    yaml_224 = "eval:\n  image_size: 224\n  knn_k: [200]\n"
    cfg = pipeline_eval_config(saved_tiny, "digits_vit_tiny", yaml_224, ["eval.knn_k=[3]", "eval.batch_size=5"])
    assert cfg.eval.knn_k == [3] and cfg.eval.batch_size == 5  # the run's overrides apply
    assert cfg.eval.image_size == 32  # the trained model's config, not the re-parsed YAML


def test_the_pipeline_component_config_without_a_saved_config(tmp_path: Path) -> None:
    official = tmp_path / "official.pth"
    torch.save({"teacher": {}}, official)
    cfg = pipeline_eval_config(official, "tiny", "eval:\n  image_size: 48\n", ["eval.knn_k=[3]"])
    assert cfg.eval.image_size == 48 and cfg.eval.knn_k == [3]
    assert pipeline_eval_config(official, "tiny", "", ["eval.knn_k=[4]"]).eval.knn_k == [4]


@pytest.mark.parametrize("component", ["eval_knn", "eval_linear"])
def test_the_components_resolve_their_config_from_the_checkpoint(component: str) -> None:
    import components.evaluate as evaluate

    source = inspect.getsource(getattr(evaluate, component).python_func)
    assert "pipeline_eval_config(checkpoint, config, config_yaml, overrides)" in source
    assert "pipeline_config(" not in source.replace("pipeline_eval_config(", "")
