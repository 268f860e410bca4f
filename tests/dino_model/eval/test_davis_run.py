"""The DAVIS evaluation end to end on the generated sequence: propagation, result files, scores.

Bounds (docs/evaluation.md): J&F-Mean >= 0.80 with the colour oracle (measured 0.879) and >= 0.70
with a random-init tiny ViT's patch features (measured 0.798), over both objects, 16 frames.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dino_model.errors import ConfigError, DataError
from dino_model.eval.davis.config import DavisConfig
from dino_model.eval.davis.io import write_indexed_png
from dino_model.eval.davis.run import METRIC_NAMES, run_davis_eval

SMALL_FRAMES = {"short_side": None, "size_multiple": 4}  # keep 64 x 96; a patch-4 grid of 16 x 24
ORACLE_BOUND = 0.80
VIT_BOUND = 0.70


def test_colour_oracle_tracks_both_objects(synthetic_davis: Path, tmp_path: Path) -> None:
    cfg = DavisConfig(features="colour", oracle_patch_size=4, **SMALL_FRAMES)
    report = run_davis_eval(None, cfg, davis_root=synthetic_davis, output_dir=tmp_path)
    metrics = report["metrics"]
    assert metrics["davis_jf_mean"] >= ORACLE_BOUND
    assert metrics["davis_j_recall"] == 1.0
    assert [row["Sequence"] for row in report["details"]["per_object"]] == ["synthetic-shapes_1", "synthetic-shapes_2"]
    assert metrics["davis_jf_mean"] == pytest.approx((metrics["davis_j_mean"] + metrics["davis_f_mean"]) / 2)


def test_vit_features_track_and_write_the_davis_layout(synthetic_davis: Path, random_checkpoint: Path,
                                                       tmp_path: Path) -> None:
    cfg = DavisConfig(**SMALL_FRAMES)
    report = run_davis_eval(random_checkpoint, cfg, davis_root=synthetic_davis, output_dir=tmp_path)
    assert report["metrics"]["davis_jf_mean"] >= VIT_BOUND
    results = sorted((tmp_path / "results" / "synthetic-shapes").glob("*.png"))
    assert [p.name for p in results] == [f"{i:05d}.png" for i in range(16)]
    with Image.open(results[5]) as img:
        assert img.mode == "P" and img.size == (96, 64)
        assert set(np.unique(np.array(img))) <= {0, 1, 2}
    gt0 = np.array(Image.open(synthetic_davis / "Annotations/480p/synthetic-shapes/00000.png"))
    np.testing.assert_array_equal(np.array(Image.open(results[0])), gt0)  # first frame = its annotation
    saved = json.loads((tmp_path / "davis.json").read_text())
    assert set(saved) == {"schema_version", "evaluation", "checkpoint", "metrics", "details"}
    assert saved["evaluation"] == "davis" and set(saved["metrics"]) == set(METRIC_NAMES.values())
    assert (tmp_path / "davis.md").read_text().startswith("# DAVIS")
    with (tmp_path / "global_results-val.csv").open() as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"]
    assert float(rows[1][0]) == pytest.approx(report["metrics"]["davis_jf_mean"], abs=6e-4)
    with (tmp_path / "per-sequence_results-val.csv").open() as fh:
        assert [r[0] for r in csv.reader(fh)] == ["Sequence", "synthetic-shapes_1", "synthetic-shapes_2"]


def copy_ground_truth(davis_root: Path, out: Path) -> Path:
    results = out / "results" / "synthetic-shapes"
    shutil.copytree(davis_root / "Annotations/480p/synthetic-shapes", results)
    return results


def test_ground_truth_as_results_scores_exactly_one(synthetic_davis: Path, tmp_path: Path) -> None:
    copy_ground_truth(synthetic_davis, tmp_path)
    report = run_davis_eval(None, DavisConfig(), davis_root=synthetic_davis, output_dir=tmp_path, score_only=True)
    metrics = report["metrics"]
    assert metrics["davis_jf_mean"] == 1.0 and metrics["davis_j_mean"] == 1.0 and metrics["davis_f_mean"] == 1.0
    assert metrics["davis_j_decay"] == 0.0 and metrics["davis_f_recall"] == 1.0


def test_a_missing_object_scores_zero_for_it(synthetic_davis: Path, tmp_path: Path) -> None:
    results = copy_ground_truth(synthetic_davis, tmp_path)
    for path in results.glob("*.png"):
        ids = np.array(Image.open(path))
        write_indexed_png(path, np.where(ids == 2, 0, ids))
    report = run_davis_eval(None, DavisConfig(), davis_root=synthetic_davis, output_dir=tmp_path, score_only=True)
    per_object = {r["Sequence"]: r for r in report["details"]["per_object"]}
    assert per_object["synthetic-shapes_1"]["J-Mean"] == 1.0
    assert per_object["synthetic-shapes_2"]["J-Mean"] == 0.0 and per_object["synthetic-shapes_2"]["F-Mean"] == 0.0
    assert report["metrics"]["davis_j_mean"] == pytest.approx(0.5)


def test_bad_results_are_refused(synthetic_davis: Path, tmp_path: Path) -> None:
    results = copy_ground_truth(synthetic_davis, tmp_path)
    write_indexed_png(results / "00003.png", np.full((64, 96), 3, dtype=np.uint8))
    with pytest.raises(DataError, match="object id 3"):
        run_davis_eval(None, DavisConfig(), davis_root=synthetic_davis, output_dir=tmp_path, score_only=True)
    (results / "00003.png").unlink()
    with pytest.raises(DataError, match="00003.png is missing"):
        run_davis_eval(None, DavisConfig(), davis_root=synthetic_davis, output_dir=tmp_path, score_only=True)


def test_max_frames_limits_propagation_and_scoring(synthetic_davis: Path, tmp_path: Path) -> None:
    cfg = DavisConfig(features="colour", oracle_patch_size=4, max_frames=5, **SMALL_FRAMES)
    report = run_davis_eval(None, cfg, davis_root=synthetic_davis, output_dir=tmp_path)
    assert len(list((tmp_path / "results" / "synthetic-shapes").glob("*.png"))) == 5
    assert report["details"]["per_sequence"]["synthetic-shapes"]["frames"] == 5


def test_vit_features_need_a_checkpoint(synthetic_davis: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a checkpoint"):
        run_davis_eval(None, DavisConfig(**SMALL_FRAMES), davis_root=synthetic_davis, output_dir=tmp_path)


@pytest.mark.parametrize(("change", "key"), [
    ({"features": "dino"}, "features"), ({"mask_format": "2018"}, "mask_format"), ({"max_frames": 1}, "max_frames")])
def test_bad_settings_are_refused(change: dict, key: str, synthetic_davis: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=key):
        run_davis_eval(None, DavisConfig(**change), davis_root=synthetic_davis, output_dir=tmp_path)


def test_bad_propagation_settings_are_refused(synthetic_davis: Path, tmp_path: Path) -> None:
    from dino_model.eval.davis.config import PropagationParams

    cfg = DavisConfig(features="colour", propagation=PropagationParams(topk=0))
    with pytest.raises(ConfigError, match="propagation.topk=0"):
        run_davis_eval(None, cfg, davis_root=synthetic_davis, output_dir=tmp_path)
