"""The official linear-probe layout: the interleaved [CLS, pooled] feature order, and classifiers in the
official file format (`state_dict` of `module.linear.*`) scored without training.

The order is checked against the official expression written out here (stack on a new last axis,
then flatten); the official file is built by hand from a head our probe trained, so scoring it must
give that head's top-1 exactly (the same features, the same weights).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from dino_model.config import load_config
from dino_model.errors import CheckpointError, ConfigError
from dino_model.eval.linear import LinearProbeConfig, frozen_features, read_linear_head
from dino_model.eval.linear_run import run_linear_eval, run_linear_head_eval
from dino_model.models.backbone import intermediate_tokens
from dino_model.models.loading import load_backbone

VIT_B_LAYOUT = {"n_last_blocks": 1, "avgpool_patchtokens": True}  # the official ViT-B setting


@pytest.fixture(scope="module")
def eval_cfg():
    return load_config("tiny").eval


@pytest.fixture(scope="module")
def digits(digits_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 train and 10 val images per class."""
    root = tmp_path_factory.mktemp("digits_head")
    for split, count in (("train", 20), ("val", 10)):
        for class_dir in sorted((digits_root / split).iterdir()):
            (root / split / class_dir.name).mkdir(parents=True)
            for png in sorted(class_dir.glob("*.png"))[:count]:
                shutil.copy(png, root / split / class_dir.name / png.name)
    return root


@pytest.fixture(scope="module")
def trained(random_checkpoint: Path, digits: Path, eval_cfg, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A probe trained on 1 CLS + pooled features: its report, and its linear.pth."""
    out = tmp_path_factory.mktemp("probe") / "linear.json"
    report = run_linear_eval(random_checkpoint, eval_cfg, train_dir=digits / "train", val_dir=digits / "val",
                             probe=LinearProbeConfig(epochs=8, lr=1.0, augment=False, **VIT_B_LAYOUT), output=out)
    return {"report": report, "head": out.with_suffix(".pth")}


def test_pooled_features_follow_the_official_interleaved_order(random_checkpoint: Path) -> None:
    model, _ = load_backbone(random_checkpoint)
    images = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        feats = frozen_features(model, images, n_last_blocks=1, avgpool=True)
        intermediate_output = intermediate_tokens(model, images, 1)
        output = torch.cat([x[:, 0] for x in intermediate_output], dim=-1)  # the official expression
        output = torch.cat((output.unsqueeze(-1), torch.mean(intermediate_output[-1][:, 1:], dim=1).unsqueeze(-1)),
                           dim=-1)
        output = output.reshape(output.shape[0], -1)
        cls, pooled = model(images), intermediate_output[0][:, 1:].mean(dim=1)
    assert feats.shape == (3, 128)
    torch.testing.assert_close(feats, output, rtol=0, atol=0)
    torch.testing.assert_close(feats[:, 0::2], cls)  # cls_0, avg_0, cls_1, avg_1, ...
    torch.testing.assert_close(feats[:, 1::2], pooled)


def test_official_format_head_scores_as_the_head_it_came_from(trained: dict, random_checkpoint: Path,
                                                              digits: Path, eval_cfg, tmp_path: Path) -> None:
    ours = torch.load(trained["head"], weights_only=True)
    assert ours["feature_order"] == "interleaved" and ours["state_dict"]["weight"].shape == (10, 128)
    official = tmp_path / "dino_tiny_linearweights.pth"
    torch.save({"state_dict": {"module.linear.weight": ours["state_dict"]["weight"].clone(),
                               "module.linear.bias": ours["state_dict"]["bias"].clone()},
                "epoch": 8, "best_acc": 0.0}, official)
    result = run_linear_head_eval(random_checkpoint, official, eval_cfg, val_dir=digits / "val",
                                  probe=LinearProbeConfig(**VIT_B_LAYOUT), output=tmp_path / "official.json")
    expected = trained["report"]["metrics"]
    assert result["metrics"]["linear_top1"] == expected["linear_top1"] > 10.0  # above chance, and equal
    assert result["metrics"]["linear_top5"] == expected["linear_top5"]
    assert result["details"]["head_format"] == "official" and result["details"]["feature_dim"] == 128
    assert json.loads((tmp_path / "official.json").read_text())["metrics"] == result["metrics"]


def test_our_head_file_carries_its_layout(trained: dict, random_checkpoint: Path, digits: Path, eval_cfg,
                                          tmp_path: Path) -> None:
    result = run_linear_head_eval(random_checkpoint, trained["head"], eval_cfg, val_dir=digits / "val",
                                  output=tmp_path / "ours.json")  # no layout flags: read from the file
    assert result["metrics"]["linear_top1"] == trained["report"]["metrics"]["linear_top1"]
    assert (result["details"]["n_last_blocks"], result["details"]["avgpool"]) == (1, True)
    with pytest.raises(ConfigError, match=r"n_last_blocks=2 \(the head was trained with 1\)"):
        run_linear_head_eval(random_checkpoint, trained["head"], eval_cfg, val_dir=digits / "val",
                             probe=LinearProbeConfig(n_last_blocks=2), output=tmp_path / "x.json")


def test_head_saved_before_the_interleaving_is_reordered(trained: dict, tmp_path: Path) -> None:
    ours = torch.load(trained["head"], weights_only=True)
    weight = ours["state_dict"]["weight"]
    concatenated = torch.cat([weight[:, 0::2], weight[:, 1::2]], dim=1)  # columns for [CLS..., pooled...]
    old = {key: value for key, value in ours.items() if key != "feature_order"}
    old["state_dict"] = {"weight": concatenated, "bias": ours["state_dict"]["bias"]}
    torch.save(old, tmp_path / "old.pth")
    head = read_linear_head(tmp_path / "old.pth")
    torch.testing.assert_close(head.weight, weight, rtol=0, atol=0)


def test_shape_and_class_mismatches_are_clear_errors(random_checkpoint: Path, digits: Path, eval_cfg,
                                                     tmp_path: Path) -> None:
    def official(path: Path, features: int, classes: int) -> Path:
        torch.save({"state_dict": {"module.linear.weight": torch.zeros(classes, features),
                                   "module.linear.bias": torch.zeros(classes)}}, path)
        return path

    wide = official(tmp_path / "wide.pth", 1536, 10)
    with pytest.raises(CheckpointError, match=r"takes 1536 features; .* gives 128 \(1 CLS \+ avgpool of width 64\)"):
        run_linear_head_eval(random_checkpoint, wide, eval_cfg, val_dir=digits / "val",
                             probe=LinearProbeConfig(**VIT_B_LAYOUT), output=tmp_path / "x.json")
    classes = official(tmp_path / "imagenet.pth", 128, 1000)
    with pytest.raises(CheckpointError, match=r"has 1000 classes; .* has 10 class folders"):
        run_linear_head_eval(random_checkpoint, classes, eval_cfg, val_dir=digits / "val",
                             probe=LinearProbeConfig(**VIT_B_LAYOUT), output=tmp_path / "x.json")
    torch.save({"state_dict": {"module.fc.weight": torch.zeros(10, 128)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"not a linear classifier file"):
        read_linear_head(tmp_path / "other.pth")


def test_eval_linear_head_command(run_cli, capsys, trained: dict, random_checkpoint: Path, digits: Path,
                                  tmp_path: Path) -> None:
    code = run_cli(["eval", "linear", "--checkpoint", str(random_checkpoint), "--head", str(trained["head"]),
                    "--val-dir", str(digits / "val"), "--output", str(tmp_path / "head.json")])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["metrics"]["linear_top1"] == trained["report"]["metrics"]["linear_top1"]
    assert not (tmp_path / "head.pth").exists()  # nothing trained, nothing saved
    code = run_cli(["eval", "linear", "--checkpoint", str(random_checkpoint), "--head", str(trained["head"]),
                    "--val-dir", str(digits / "val"), "--random-init"])
    assert code == 2 and "drop --random-init" in capsys.readouterr().err
