"""A drift monitor that cannot compute says so: invalid references are refused, never read as "no drift".

A NaN or zero bandwidth, a NaN threshold or a NaN or empty sample makes every MMD^2 NaN, and
`NaN > threshold` is false; window 0 divides by zero. Each such reference is refused where it is
written (export: `save`), read (`load`, `infer --drift-reference`) and used (`DriftMonitor`,
`batch_drift`), in one line naming the file and the problem.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from dino_model.errors import ConfigError, DataError
from dino_model.monitoring.drift import DriftMonitor, DriftReference, batch_drift, build_reference


@pytest.fixture(scope="module")
def reference() -> DriftReference:
    return build_reference(np.random.default_rng(0).standard_normal((64, 8)), size=32, window=8, n_permutations=20)


def _replaced(reference: DriftReference, **fields) -> DriftReference:
    return dataclasses.replace(reference, **fields)


def _write_raw(reference: DriftReference, path: Path, **fields) -> Path:
    """The reference's .npz with `fields` replaced, written as a tampered or corrupted file would be."""
    arrays = {"format": np.int64(1), "sample": reference.sample, "mean": reference.mean, "std": reference.std,
              "bandwidth": np.float64(reference.bandwidth), "threshold": np.float64(reference.threshold),
              "window": np.int64(reference.window), "self_term": np.float64(reference.self_term)}
    with path.open("wb") as fh:
        np.savez(fh, **(arrays | fields))
    return path


def _nan_sample(reference: DriftReference) -> np.ndarray:
    sample = reference.sample.copy()
    sample[3, 1] = np.nan
    return sample


INVALID = [  # (case, fields of the file, message)
    ("nan bandwidth", lambda r: {"bandwidth": np.float64("nan")}, r"bandwidth=nan must be a finite number > 0"),
    ("zero bandwidth", lambda r: {"bandwidth": np.float64(0)}, r"bandwidth=0\.0 must be a finite number > 0"),
    ("nan threshold", lambda r: {"threshold": np.float64("nan")}, r"threshold=nan must be a finite number > 0"),
    ("zero threshold", lambda r: {"threshold": np.float64(0)}, r"threshold=0\.0 must be a finite number > 0"),
    ("nan sample", lambda r: {"sample": _nan_sample(r)}, "the sample holds NaN or infinite values"),
    ("empty sample", lambda r: {"sample": r.sample[:0]}, "the sample holds 0 embeddings, fewer than the window of 8"),
    ("short sample", lambda r: {"sample": r.sample[:5]}, "the sample holds 5 embeddings, fewer than the window of 8"),
    ("zeroed sample", lambda r: {"sample": np.zeros_like(r.sample)}, "the sample rows must be L2-normalised"),
    ("window 0", lambda r: {"window": np.int64(0)}, "window=0 must be an integer >= 2"),
    ("window 1", lambda r: {"window": np.int64(1)}, "window=1 must be an integer >= 2"),
    ("negative window", lambda r: {"window": np.int64(-4)}, "window=-4 must be an integer >= 2"),
    ("tampered self term", lambda r: {"self_term": np.float64(r.self_term / 2)}, "self_term=.* is not the kernel mean"),
]


@pytest.mark.parametrize(("case", "fields", "message"), INVALID, ids=[c[0] for c in INVALID])
def test_load_refuses_an_invalid_reference_in_one_line_naming_the_file(reference, tmp_path: Path, case, fields,
                                                                       message) -> None:
    path = _write_raw(reference, tmp_path / "model.drift.npz", **fields(reference))
    with pytest.raises(ConfigError, match=message) as refused:
        DriftReference.load(path)
    text = str(refused.value)
    assert str(path) in text and "\n" not in text and "dino-mlops export" in text


def test_a_fractional_window_is_not_truncated(reference, tmp_path: Path) -> None:
    path = _write_raw(reference, tmp_path / "m.drift.npz", window=np.float64(7.5))
    with pytest.raises(ConfigError, match="window=7.5 is not an integer"):
        DriftReference.load(path)


@pytest.mark.parametrize(("case", "fields", "message"), INVALID, ids=[c[0] for c in INVALID])
def test_save_writes_no_invalid_reference(reference, tmp_path: Path, case, fields, message) -> None:
    """The export writes the reference with `save`: an invalid one is refused and no file is left."""
    values = {k: (int(v) if k == "window" else float(v) if np.ndim(v) == 0 else v)
              for k, v in fields(reference).items()}
    with pytest.raises(ConfigError, match=f"refusing to write the drift reference .*m.drift.npz: {message}"):
        _replaced(reference, **values).save(tmp_path / "m.drift.npz")
    assert not (tmp_path / "m.drift.npz").exists()


@pytest.mark.parametrize("fields", [{"window": 0}, {"bandwidth": float("nan")}, {"threshold": float("nan")},
                                    {"bandwidth": 0.0}])
def test_batch_drift_and_the_monitor_refuse_instead_of_reporting_no_drift(reference, fields) -> None:
    """Before: window 0 raised ZeroDivisionError, a NaN bandwidth or threshold reported drifted: false."""
    broken = _replaced(reference, **fields)
    embeddings = np.random.default_rng(1).standard_normal((64, 8))
    with pytest.raises(ConfigError, match="is invalid"):
        batch_drift(embeddings, broken)
    with pytest.raises(ConfigError, match="is invalid"):
        DriftMonitor(broken)


def test_batch_drift_output_is_valid_json_and_unknown_below_one_window(reference) -> None:
    rng = np.random.default_rng(2)
    short = batch_drift(rng.standard_normal((reference.window - 1, 8)), reference)
    assert short["windows"] == 0 and short["drifted"] is None  # unknown, not "no drift"
    full = batch_drift(rng.standard_normal((3 * reference.window, 8)), reference)
    assert full["windows"] == 3 and full["drifted"] in (True, False)
    for report in (short, full):
        json.dumps(report, allow_nan=False)
    with pytest.raises(DataError, match="NaN or infinite"):
        batch_drift(np.full((reference.window, 8), np.nan), reference)


def test_infer_refuses_an_invalid_reference_before_calling_the_server(reference, run_cli, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    bad = _write_raw(reference, tmp_path / "model.drift.npz", bandwidth=np.float64("nan"))
    out = tmp_path / "e.json"
    code = run_cli(["infer", str(tmp_path), "--output", str(out), "--drift-reference", str(bad),
                    "--url", "127.0.0.1:1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert f"the drift reference {bad} is invalid: bandwidth=nan must be a finite number > 0" in err[0]
    assert not out.exists()


def test_printed_results_are_strict_json(capsys: pytest.CaptureFixture) -> None:
    """A NaN in a result is a bug: it raises before anything is written instead of printing a `NaN` token."""
    from dino_model.cli.options import print_result

    with pytest.raises(ValueError, match="not JSON compliant"):
        print_result({"drift": {"mmd2_max": float("nan")}})
    assert capsys.readouterr().out == ""
