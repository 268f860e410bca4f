"""End to end: a data set of 5 or fewer classes reports no k-NN top-5 anywhere (JSON, Markdown, CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dino_model.cli.main import main


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
