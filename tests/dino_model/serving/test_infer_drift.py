"""`dino-mlops infer --drift-reference` on a real tritonserver: the export's reference scores a set of images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dino_model.monitoring.drift import DriftReference, drift_path

pytestmark = pytest.mark.triton


def _infer(run_cli, capsys, url: str, inputs: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    code = run_cli(["infer", str(inputs), "--url", url, "--output", str(out), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_digits_pass_and_noise_drifts(served, tiny_export, tiny_onnx: Path, digits_root: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture, run_cli) -> None:
    reference = drift_path(tiny_onnx)
    window = DriftReference.load(reference).window
    code, out, _ = _infer(run_cli, capsys, served.grpc_url, digits_root / "val", tmp_path / "val.npy",
                          "--drift-reference", str(reference))
    assert code == 0
    clean = json.loads(out)["drift"]
    assert clean["windows"] == json.loads(out)["images"] // window > 0 and clean["drifted"] is False
    noise = tmp_path / "noise"
    noise.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2 * window):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(noise / f"{i:03d}.png")
    code, out, _ = _infer(run_cli, capsys, served.grpc_url, noise, tmp_path / "noise.npy",
                          "--drift-reference", str(reference))
    shifted = json.loads(out)["drift"]
    assert code == 0 and shifted["drifted"] is True and shifted["drifted_windows"] == shifted["windows"] == 2


def test_a_missing_reference_is_one_line_before_any_image_is_sent(served, digits_root: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture, run_cli) -> None:
    code, _, err = _infer(run_cli, capsys, served.grpc_url, digits_root / "val", tmp_path / "x.npy",
                          "--drift-reference", str(tmp_path / "nowhere.drift.npz"))
    assert code != 0 and "cannot read the drift reference" in err and "nowhere.drift.npz" in err
    assert not (tmp_path / "x.npy").exists()
