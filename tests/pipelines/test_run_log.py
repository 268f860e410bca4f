"""The local run's output: the stages, epochs, scores and errors on the terminal, every line in the log."""

from __future__ import annotations

import io
import logging
import sys
from pathlib import Path

import pytest

from pipelines.run_log import FilteredStream, run_log

# lines as kfp.local and the task processes print them (colours included)
KFP_OUTPUT = """\
13:01:02.123 - INFO - Executing task \x1b[96m'resolve-data-version'\x1b[0m
    13:01:02.200 - INFO - Streaming logs from subprocess...
    {"inputs": {"parameterValues": {"data_repo": "/repo"}}, "outputs": {"artifacts": {}}}
    2026-12-01 13:01:05,001 [rank0] INFO dino_model.train.loop: epoch 0: epoch=0 loss=4.632 lr=3.1e-05
    /venv/lib/python3.11/site-packages/kfp/local/task.py:100: UserWarning: settings have no effect
13:01:09.500 - INFO - Task \x1b[96m'pretrain'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m
    2026-12-01 13:01:10,001 [rank0] INFO dino_model.eval.knn_run: k-NN top-1 18.61% (k=20) on 360 images
    2026-12-01 13:01:11,002 WARNING quality_gate: quality gate: deploy (top-1 18.6 >= 10.0)
"""


def test_the_terminal_gets_stages_epochs_and_scores_and_the_log_everything() -> None:
    log, terminal = io.StringIO(), io.StringIO()
    stream = FilteredStream(log, terminal)
    for chunk in (KFP_OUTPUT[:50], KFP_OUTPUT[50:333], KFP_OUTPUT[333:]):  # lines arrive in pieces
        stream.write(chunk)
    assert log.getvalue() == KFP_OUTPUT
    shown = terminal.getvalue().splitlines()
    assert len(shown) == 5
    assert "Executing task" in shown[0] and "epoch 0:" in shown[1] and "finished with status" in shown[2]
    assert "k-NN top-1 18.61%" in shown[3] and "quality gate: deploy" in shown[4]
    assert not any("parameterValues" in line or "UserWarning" in line for line in shown)


def test_a_run_routes_prints_logs_and_stderr_and_shows_the_tail_on_failure(tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "out" / "run.log"
    with pytest.raises(RuntimeError, match="task failed"), run_log(path, tail_on_error=3):
        print('{"executorInput": "dump"}')
        print("task.py:100: UserWarning: per-task noise", file=sys.stderr)
        handler = logging.StreamHandler(sys.stdout)  # as kfp.local's logger context builds it
        logging.getLogger("kfp-like").addHandler(handler)
        logging.getLogger("kfp-like").error("Task 'pretrain' finished with status FAILURE")
        logging.getLogger("kfp-like").removeHandler(handler)
        print("the task's own last words")
        raise RuntimeError("task failed")
    text = path.read_text()
    assert '"executorInput": "dump"' in text and "per-task noise" in text and "the task's own last words" in text
    err = capsys.readouterr().err
    assert "finished with status FAILURE" in err and '"executorInput"' not in err.split("--- the last")[0]
    assert f"--- the last 3 lines of {path} ---" in err and "the task's own last words" in err
    assert sys.stdout is not None and not isinstance(sys.stdout, FilteredStream)
