"""A data set of 5 or fewer classes reports no top-5, k-NN or linear probe, anywhere (JSON, Markdown, CLI):
one rule, `dino_model.eval.top5.reports_top5`, for both."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dino_model.cli.main import main
from dino_model.eval.knn import knn_classify
from dino_model.eval.linear import accuracy
from dino_model.eval.top5 import reports_top5


def _folders(root: Path, n_classes: int, per_class: int) -> Path:
    rng = np.random.default_rng(n_classes)
    for split, count in (("train", per_class), ("val", 2)):
        for c in range(n_classes):
            (root / split / f"class{c}").mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) // (c + 1)
                Image.fromarray(pixels).save(root / split / f"class{c}" / f"{i}.png")
    return root


@pytest.mark.parametrize(("n_classes", "has_top5"), [(3, False), (6, True)])
def test_top5_reported_only_above_five_classes(random_checkpoint: Path, tmp_path: Path, capsys, n_classes: int,
                                              has_top5: bool) -> None:
    # 2 val images per class (far below the official 100-image minimum); k = 20 > the 3 train images per class
    data = _folders(tmp_path / "data", n_classes, per_class=3)
    out = tmp_path / "knn.json"
    code = main(["eval", "knn", "--checkpoint", str(random_checkpoint), "--train-dir", str(data / "train"),
                 "--val-dir", str(data / "val"), "--output", str(out), "eval.knn_k=[2,20]"])
    printed = json.loads(capsys.readouterr().out)
    assert code == 0
    saved = json.loads(out.read_text())
    expected = {"knn_top1", "knn_top1_k2", "knn_top1_k20"} | ({"knn_top5_k2", "knn_top5_k20"} if has_top5 else set())
    assert set(saved["metrics"]) == expected and set(printed["metrics"]) == expected
    assert ("top5" in out.with_suffix(".md").read_text()) is has_top5


@pytest.mark.parametrize(("n_classes", "has_top5"), [(3, False), (6, True)])
def test_linear_top5_reported_only_above_five_classes(random_checkpoint: Path, tmp_path: Path, capsys,
                                                     n_classes: int, has_top5: bool) -> None:
    data = _folders(tmp_path / "data", n_classes, per_class=3)
    out = tmp_path / "linear.json"
    code = main(["eval", "linear", "--checkpoint", str(random_checkpoint), "--config", "tiny", "--train-dir",
                 str(data / "train"), "--val-dir", str(data / "val"), "--no-augment", "--epochs", "2",
                 "--output", str(out)])
    printed = json.loads(capsys.readouterr().out)
    assert code == 0
    saved = json.loads(out.read_text())
    assert ("linear_top5" in saved["metrics"]) is has_top5 and saved["metrics"] == printed["metrics"]
    assert all(("top5" in h) is has_top5 for h in saved["details"]["history"])
    assert ("top-5" in out.with_suffix(".md").read_text()) is has_top5
    # the saved classifier scored on its own (`--head`): the same rule
    head_out = tmp_path / "head.json"
    assert main(["eval", "linear", "--checkpoint", str(random_checkpoint), "--config", "tiny", "--head",
                 str(out.with_suffix(".pth")), "--val-dir", str(data / "val"), "--output", str(head_out)]) == 0
    capsys.readouterr()
    assert ("linear_top5" in json.loads(head_out.read_text())["metrics"]) is has_top5


@pytest.mark.parametrize("n_classes", range(1, 9))
def test_knn_and_linear_follow_one_rule(n_classes: int) -> None:
    gen = torch.Generator().manual_seed(n_classes)
    labels = torch.arange(n_classes).repeat(3)
    feats = torch.randn(len(labels), 8, generator=gen)
    knn = knn_classify(feats, labels, feats, labels, ks=[2], num_classes=n_classes)[2]
    _, top5 = accuracy(torch.randn(len(labels), n_classes, generator=gen), labels)
    assert reports_top5(n_classes) is (n_classes > 5)
    assert ("top5" in knn) is (top5 is not None) is reports_top5(n_classes)
