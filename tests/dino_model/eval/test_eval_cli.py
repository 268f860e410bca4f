"""`dino-mlops eval linear | davis | attention` through the real command entry point (knn kept)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dino_model.cli.main import build_parser, main


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, dict | None, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else None), captured.err


@pytest.mark.parametrize(("argv", "func"), [
    (["eval", "knn", "--checkpoint", "c.pth"], "run_knn"),
    (["eval", "linear", "--checkpoint", "c.pth"], "run_linear"),
    (["eval", "davis", "--davis-root", "d", "--output-dir", "o"], "run_davis"),
    (["eval", "attention", "--checkpoint", "c.pth", "--image", "i.png", "--output-dir", "o"], "run_attention"),
])
def test_every_eval_command_is_registered(argv: list[str], func: str) -> None:
    assert build_parser().parse_args(argv).func.__name__ == func


def test_eval_davis_with_the_colour_oracle(capsys, synthetic_davis: Path, tmp_path: Path) -> None:
    code, result, _ = run(capsys, "eval", "davis", "--features", "colour", "--oracle-patch-size", 4,
                          "--short-side", "none", "--size-multiple", 4, "--max-frames", 6,
                          "--davis-root", synthetic_davis, "--output-dir", tmp_path)
    assert code == 0
    assert result["evaluation"] == "davis" and "details" not in result  # details stay in the file
    assert result["report_path"] == str(tmp_path / "davis.json")
    assert json.loads((tmp_path / "davis.json").read_text())["metrics"] == result["metrics"]
    assert result["metrics"]["davis_jf_mean"] > 0.5


def test_eval_davis_error_is_one_line(capsys, synthetic_davis: Path, tmp_path: Path) -> None:
    code, _, err = run(capsys, "eval", "davis", "--davis-root", synthetic_davis, "--output-dir", tmp_path)
    assert code == 2
    assert err.startswith("dino-mlops: error: ") and "needs a checkpoint" in err


def test_eval_attention(capsys, random_checkpoint: Path, tmp_path: Path) -> None:
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(image)
    code, result, _ = run(capsys, "eval", "attention", "--checkpoint", random_checkpoint, "--image", image,
                          "--output-dir", tmp_path / "out", "--image-size", 32, 32, "--threshold", "none")
    assert code == 0 and result["evaluation"] == "attention"
    assert "attention_kept_fraction_mean" not in result["metrics"]  # no threshold, no masks
    assert not list((tmp_path / "out" / "x").glob("mask_*"))


def test_eval_linear(capsys, random_checkpoint: Path, digits_root: Path, tmp_path: Path) -> None:
    small = tmp_path / "digits"
    for split in ("train", "val"):
        for class_dir in sorted((digits_root / split).iterdir()):
            (small / split / class_dir.name).mkdir(parents=True)
            for png in sorted(class_dir.glob("*.png"))[:4]:
                shutil.copy(png, small / split / class_dir.name / png.name)
    code, result, _ = run(capsys, "eval", "linear", "--checkpoint", random_checkpoint, "--config", "tiny",
                          "--train-dir", small / "train", "--val-dir", small / "val", "--no-augment",
                          "--epochs", 3, "--lr", 1.0, "--output", tmp_path / "linear.json")
    assert code == 0 and result["evaluation"] == "linear"
    saved = json.loads((tmp_path / "linear.json").read_text())
    assert saved["details"]["probe"]["epochs"] == 3 and saved["details"]["probe"]["augment"] is False
    assert (tmp_path / "linear.pth").is_file()
