"""The quality gate logs a pass at INFO and a hold at WARNING, and the pass is in a KFP step's log.

Run through kfp.local's subprocess runner, the component executes under `kfp.dsl.executor_main`,
whose logging setup (root at INFO, on stdout) is what a cluster step gets too.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from kfp import local

from components.deploy import quality_gate

GATE = {"min_top1": 10.0, "require_not_worse": False, "triton_url": "", "model_name": "m"}


@pytest.mark.parametrize(("top1", "decision", "level"),
                         [(50.0, "deploy", logging.INFO), (5.0, "hold", logging.WARNING)])
def test_pass_is_info_and_hold_is_warning(caplog: pytest.LogCaptureFixture, top1: float, decision: str,
                                          level: int) -> None:
    with caplog.at_level(logging.DEBUG, logger="quality_gate"):
        assert quality_gate.python_func(knn_top1=top1, **GATE) == decision
    (record,) = [r for r in caplog.records if r.name == "quality_gate"]
    assert record.levelno == level and record.getMessage().startswith(f"quality gate: {decision}")


def test_the_pass_shows_in_the_kfp_step_log(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path))
    assert quality_gate(knn_top1=50.0, **GATE).output == "deploy"
    assert quality_gate(knn_top1=5.0, **GATE).output == "hold"
    out = capfd.readouterr()
    lines = [line for line in (out.out + out.err).splitlines() if "quality gate:" in line]
    assert len(lines) == 2
    assert " INFO]: quality gate: deploy" in lines[0]  # the executor's format: [KFP Executor <time> LEVEL]
    assert " WARNING]: quality gate: hold" in lines[1]
