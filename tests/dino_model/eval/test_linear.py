"""The linear probe: feature layout, classifier, training loop and report, on the digits set.

Bounds (docs/evaluation.md): on digits (10 classes, chance 10 %), a random-init tiny ViT's cached
CLS features reach >= 30 % top-1 (measured 40.8 %), and a pixel "backbone" (the image itself,
pooled to 8 x 8) >= 85 % (measured 95.8 %): the probe separates informative features from
poor ones.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dino_model.config import ModelConfig, load_config
from dino_model.errors import DataError
from dino_model.eval.linear import (
    LinearClassifier,
    LinearProbeConfig,
    accuracy,
    feature_layout,
    frozen_features,
)
from dino_model.eval.linear_run import probe_backbone, run_linear_eval
from dino_model.models.backbone import intermediate_tokens
from dino_model.models.loading import load_backbone

FAST_PROBE = LinearProbeConfig(epochs=30, lr=1.0, augment=False)


@pytest.fixture(scope="module")
def eval_cfg():
    return load_config("tiny").eval


@pytest.fixture(scope="module")
def small_digits(digits_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 train and 5 val images per class, for the slower augmented path."""
    root = tmp_path_factory.mktemp("small_digits")
    for split, count in (("train", 20), ("val", 5)):
        for class_dir in sorted((digits_root / split).iterdir()):
            (root / split / class_dir.name).mkdir(parents=True)
            for png in sorted(class_dir.glob("*.png"))[:count]:
                shutil.copy(png, root / split / class_dir.name / png.name)
    return root


def test_feature_layout_defaults() -> None:
    assert feature_layout(LinearProbeConfig(), width=384, depth=12) == (4, False)  # ViT-S
    assert feature_layout(LinearProbeConfig(), width=768, depth=12) == (1, True)  # ViT-B
    assert feature_layout(LinearProbeConfig(), width=64, depth=2) == (2, False)  # capped at the depth
    assert feature_layout(LinearProbeConfig(n_last_blocks=1, avgpool_patchtokens=True), width=64, depth=2) == (1, True)


def test_frozen_features_concatenate_cls_tokens_and_pooled_patches(random_checkpoint: Path) -> None:
    model, _ = load_backbone(random_checkpoint)
    images = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        tokens = intermediate_tokens(model, images, 2)
        feats = frozen_features(model, images, n_last_blocks=2, avgpool=True)
    assert feats.shape == (3, 64 * 3)
    torch.testing.assert_close(feats[:, :64], tokens[0][:, 0])
    torch.testing.assert_close(feats[:, 64:128], tokens[1][:, 0])
    torch.testing.assert_close(feats[:, 128:], tokens[1][:, 1:].mean(dim=1))
    torch.testing.assert_close(feats[:, 64:128], model(images))  # the last CLS is the model's output


def test_classifier_init_and_accuracy_by_hand() -> None:
    clf = LinearClassifier(1000, 50, generator=torch.Generator().manual_seed(0))
    assert clf.weight.std().item() == pytest.approx(0.01, rel=0.05) and not clf.bias.any()
    logits = torch.tensor([[0.1, 0.9, 0.0, 0.0, 0.0, 0.0], [0.9, 0.1, 0.0, 0.0, 0.0, -1.0]])
    assert accuracy(logits, torch.tensor([1, 5])) == (50.0, 50.0)  # second: rank 6 of 6, outside top 5


class PixelBackbone(nn.Module):
    """An informative feature for digits: the grey image average-pooled to 8 x 8 (the source resolution)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(images.mean(dim=1, keepdim=True), 8).flatten(1)


def test_probe_beats_chance_widely_and_ranks_features(random_checkpoint: Path, digits_root: Path,
                                                      eval_cfg) -> None:
    model, model_cfg = load_backbone(random_checkpoint)
    dirs = {"train_dir": digits_root / "train", "val_dir": digits_root / "val"}
    vit = probe_backbone(model, model_cfg, eval_cfg, probe=FAST_PROBE, **dirs)
    pixels = probe_backbone(PixelBackbone(), ModelConfig(arch="resnet18"), eval_cfg, probe=FAST_PROBE, **dirs)
    assert vit["best"]["top1"] >= 30.0  # chance is 10 %
    assert pixels["best"]["top1"] >= 85.0
    assert pixels["best"]["top1"] > vit["best"]["top1"] + 20
    assert vit["feature_dim"] == 128 and vit["n_last_blocks"] == 2 and pixels["feature_dim"] == 64
    history = [h["top1"] for h in vit["history"]]
    assert len(history) == FAST_PROBE.epochs and vit["best"]["top1"] == max(history)  # best epoch kept


def test_run_writes_report_and_best_weights(random_checkpoint: Path, small_digits: Path, tmp_path: Path,
                                            eval_cfg) -> None:
    probe = LinearProbeConfig(epochs=2, lr=1.0, augment=True, batch_size=64)
    out = tmp_path / "linear.json"
    report = run_linear_eval(random_checkpoint, eval_cfg, train_dir=small_digits / "train",
                             val_dir=small_digits / "val", probe=probe, output=out)
    saved = json.loads(out.read_text())
    assert set(saved) == {"schema_version", "evaluation", "checkpoint", "metrics", "details"}
    assert saved["evaluation"] == "linear"
    assert set(saved["metrics"]) == {"linear_top1", "linear_top5", "linear_best_epoch", "linear_last_top1"}
    assert saved["details"]["lr"] == pytest.approx(1.0 * 64 / 256)
    assert saved["details"]["n_train"] == 200 and saved["details"]["n_val"] == 50
    assert report["metrics"] == saved["metrics"] and out.with_suffix(".md").is_file()
    weights = torch.load(out.with_suffix(".pth"), weights_only=True)
    assert weights["state_dict"]["weight"].shape == (10, 128)
    assert weights["epoch"] == saved["metrics"]["linear_best_epoch"]


def test_random_init_baseline_is_labelled(random_checkpoint: Path, small_digits: Path, tmp_path: Path,
                                          eval_cfg) -> None:
    report = run_linear_eval(random_checkpoint, eval_cfg, train_dir=small_digits / "train",
                             val_dir=small_digits / "val", probe=LinearProbeConfig(epochs=1, augment=False),
                             output=tmp_path / "r.json", random_init=True)
    assert report["checkpoint"].startswith("random-init:") and report["details"]["random_init"] is True


def test_mismatched_class_folders_are_refused(random_checkpoint: Path, small_digits: Path, tmp_path: Path,
                                              eval_cfg) -> None:
    val = tmp_path / "val"
    shutil.copytree(small_digits / "val", val)
    shutil.rmtree(val / "9")
    with pytest.raises(DataError, match="same class folders"):
        run_linear_eval(random_checkpoint, eval_cfg, train_dir=small_digits / "train", val_dir=val,
                        probe=LinearProbeConfig(epochs=1, augment=False), output=tmp_path / "x.json")
