"""`dino-mlops pipeline run` explains where pipelines run."""

from __future__ import annotations

import pytest


def test_run_without_local_says_how_to_run_here_and_on_a_cluster(run_cli, capsys: pytest.CaptureFixture) -> None:
    assert run_cli(["pipeline", "run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "add --local" in err[0] and "pipeline upload" in err[0] and "pipeline submit" in err[0]
