"""Numeric options of the search evaluations are range-checked in one line naming the option and the range.

Before, `eval copydetection --gem-p 0` died of ZeroDivisionError and `eval retrieval --recall-k 0`
wrote NaN metrics into its report; now both are refused before the checkpoint is read.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from dino_model.errors import ConfigError
from dino_model.eval.copydetection import fit_whitening, gem
from dino_model.eval.retrieval import rank_and_score
from dino_model.eval.search_settings import CopyDetectionConfig, RetrievalConfig
from dino_model.train.loop import numbered_copies

RETRIEVAL = [  # (field values, message)
    ({"recall_ks": [0]}, r"recall_ks \(--recall-k\)=\[0\] must hold one or more integers >= 1"),
    ({"recall_ks": [5, -1]}, r"recall_ks \(--recall-k\)=\[5, -1\] must hold one or more integers >= 1"),
    ({"recall_ks": []}, r"recall_ks \(--recall-k\)=\[\] must hold one or more integers >= 1"),
    ({"recall_ks": [1.5]}, r"must hold one or more integers >= 1"),
    ({"chunk_size": 0}, r"chunk_size=0 must be an integer >= 1"),
]
COPY = [
    ({"gem_p": 0.0}, r"gem_p \(--gem-p\)=0\.0 must be a finite number > 0"),
    ({"gem_p": -2.0}, r"gem_p \(--gem-p\)=-2\.0 must be a finite number > 0"),
    ({"gem_p": math.nan}, r"gem_p \(--gem-p\)=nan must be a finite number > 0"),
    ({"gem_p": math.inf}, r"gem_p \(--gem-p\)=inf must be a finite number > 0"),
    ({"originals": 0}, r"originals \(--originals\)=0 must be an integer >= 1"),
    ({"seed": -1}, r"seed \(--seed\)=-1 must be an integer >= 0"),
    ({"whiten_dim": 0}, r"whiten_dim \(--whiten-dim\)=0 must be an integer >= 1"),
    ({"whiten_power": -0.5}, r"whiten_power=-0\.5 must be a finite number in \[0, 1\]"),
    ({"whiten_power": 2.0}, r"whiten_power=2\.0 must be a finite number in \[0, 1\]"),
    ({"edits": []}, r"edits \(--edits\)=\[\] must hold one or more of crop, rotate"),
    ({"edits": ["blur"]}, r"edits \(--edits\)=\['blur'\] must hold one or more of"),
    ({"chunk_size": -1}, r"chunk_size=-1 must be an integer >= 1"),
]


@pytest.mark.parametrize(("fields", "message"), RETRIEVAL, ids=[m for _, m in RETRIEVAL])
def test_retrieval_settings_name_the_option_and_the_range(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RetrievalConfig(**fields)


@pytest.mark.parametrize(("fields", "message"), COPY, ids=[m for _, m in COPY])
def test_copydetection_settings_name_the_option_and_the_range(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CopyDetectionConfig(**fields)


def test_the_edges_of_each_range_are_accepted() -> None:
    RetrievalConfig(recall_ks=[1], chunk_size=1)
    CopyDetectionConfig(originals=1, seed=0, gem_p=1e-3, whiten_power=0.0, whiten_dim=1, edits=["crop"], chunk_size=1)
    CopyDetectionConfig(whiten_power=1.0, gem_p=1e3)


def test_the_library_functions_check_their_own_ranges() -> None:
    """Callers that build no settings object (a pipeline component, a notebook) get the same one line."""
    x, y = torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2, 2])
    with pytest.raises(ConfigError, match=r"recall_ks \(--recall-k\)=\[0\]"):
        rank_and_score(x, y, x, y, ks=[0], leave_one_out=True)
    with pytest.raises(ConfigError, match=r"gem_p \(--gem-p\)=0 must be a finite number > 0"):
        gem(torch.rand(2, 5, 3), p=0)
    with pytest.raises(ConfigError, match=r"whiten_power=-1\.0 must be a finite number in \[0, 1\]"):
        fit_whitening(torch.randn(10, 4), power=-1.0)


def test_a_large_gem_exponent_stays_finite_and_tends_to_the_max() -> None:
    """x^p overflows float32 near x = 50, p = 23: the pool is computed relative to the largest value."""
    tokens = torch.rand(2, 7, 3) * 60
    pooled = gem(tokens, p=100.0)
    assert torch.isfinite(pooled).all()
    torch.testing.assert_close(pooled, tokens.amax(dim=1), rtol=0.02, atol=0)


@pytest.mark.parametrize(("argv", "message"), [
    (["eval", "copydetection", "--gem-p", "0"], "gem_p (--gem-p)=0.0 must be a finite number > 0"),
    (["eval", "copydetection", "--originals", "0"], "originals (--originals)=0 must be an integer >= 1"),
    (["eval", "copydetection", "--whiten-dim", "0"], "whiten_dim (--whiten-dim)=0 must be an integer >= 1"),
    (["eval", "retrieval", "--recall-k", "0"], "recall_ks (--recall-k)=[0] must hold one or more integers >= 1"),
])
def test_the_cli_refuses_in_one_line_and_writes_no_report(argv: list[str], message: str, run_cli,
                                                          random_checkpoint: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    report = tmp_path / "r.json"
    code = run_cli([*argv, "--checkpoint", str(random_checkpoint), "--output", str(report), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not report.exists()


def test_numbered_checkpoint_copies_are_said_not_silent() -> None:
    assert "no numbered copies (train.saveckp_freq=0)" in numbered_copies(0)
    assert "every 5 epoch(s)" in numbered_copies(5)
