"""Real DAVIS 2016 sequences from ../shared/datasets/davis2016_subset (skipped when absent).

Six frames at a 96-px short side keep it fast. The original DAVIS 2016 masks are grayscale
{0, 255}: read as object 1 they must score exactly like the palette copy in Annotations_indexed,
while reading them as 2017 ids (255 = void) finds no object, the trap the official tools fall in.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dino_model.errors import DataError
from dino_model.eval.davis.config import DavisConfig
from dino_model.eval.davis.io import annotation_paths, read_mask
from dino_model.eval.davis.run import run_davis_eval

pytestmark = pytest.mark.shared_data

SEQUENCES = ["blackswan", "car-shadow"]
FAST = {"sequences": SEQUENCES, "short_side": 96, "size_multiple": 8, "max_frames": 6}
VIT_BOUND = 0.40  # J&F-Mean of a random-init tiny ViT over frames 1-4: 0.484 measured (docs/evaluation.md)


def test_2016_masks_read_as_object_one(davis2016: Path) -> None:
    for seq in SEQUENCES:
        raw_path = annotation_paths(davis2016, seq)[0]
        indexed_path = annotation_paths(davis2016, seq, annotations="Annotations_indexed")[0]
        with Image.open(raw_path) as img:
            assert img.mode == "L" and set(np.unique(np.array(img))) == {0, 255}
        raw, indexed = read_mask(raw_path), read_mask(indexed_path)
        assert set(np.unique(raw)) == {0, 1}
        np.testing.assert_array_equal(raw, indexed)
        assert read_mask(raw_path, mask_format="2017").max() == 0


@pytest.fixture(scope="module")
def propagated(davis2016: Path, random_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One propagation run over the raw DAVIS 2016 masks (results under details.results_dir)."""
    out = tmp_path_factory.mktemp("davis2016")
    return run_davis_eval(random_checkpoint, DavisConfig(**FAST), davis_root=davis2016, output_dir=out)


def test_propagation_on_real_frames(propagated: dict) -> None:
    assert propagated["details"]["n_objects"] == 2
    assert propagated["metrics"]["davis_jf_mean"] >= VIT_BOUND
    first = Path(propagated["details"]["results_dir"]) / "blackswan" / "00000.png"
    with Image.open(first) as img:
        assert img.mode == "P" and img.size == (854, 480)
        assert set(np.unique(np.array(img))) == {0, 1}


def test_both_annotation_formats_score_the_same(davis2016: Path, propagated: dict) -> None:
    out = Path(propagated["details"]["results_dir"]).parent
    indexed = run_davis_eval(None, DavisConfig(annotations="Annotations_indexed", **FAST), davis_root=davis2016,
                             output_dir=out, score_only=True)
    assert indexed["metrics"] == propagated["metrics"]


def test_reading_2016_masks_as_2017_ids_finds_no_object(davis2016: Path, propagated: dict) -> None:
    # As with the official tools: 255 is void, so the ground truth has no object and the results'
    # object 1 is refused.
    out = Path(propagated["details"]["results_dir"]).parent
    with pytest.raises(DataError, match="ground truth has 0 object.*mask_format"):
        run_davis_eval(None, DavisConfig(mask_format="2017", **FAST), davis_root=davis2016, output_dir=out,
                       score_only=True)
