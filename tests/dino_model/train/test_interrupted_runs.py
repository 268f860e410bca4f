"""Interrupted and refused runs: a SIGKILLed run resumes cleanly, a full disk is one line, settings stay put.

The killed run is a real training process: a hook in it only waits inside the second checkpoint's
file fsync (after the temporary file is written, before the rename), so the SIGKILL lands there every time.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dino_model.errors import CheckpointError, ConfigError, TrainingDivergedError
from dino_model.logs import read_jsonl
from dino_model.loss import DINOLoss
from dino_model.runtime import atomic as atomic_module
from dino_model.runtime.checkpoint import load_checkpoint, save_atomic
from dino_model.train.loop import fit

from .conftest import small_cfg

SMALL = ["model.out_dim=128", "train.batch_size=8", "train.saveckp_freq=0"]

STALL_IN_SECOND_FSYNC = """
import os, stat, sys, time
marker, argv = sys.argv[1], sys.argv[2:]
real_fsync, calls = os.fsync, []
def fsync(fd):
    if stat.S_ISREG(os.fstat(fd).st_mode):  # a file's fsync, not its folder's after the rename
        calls.append(fd)
        if len(calls) == 2:  # epoch 1's checkpoint: written to its temporary, not yet renamed
            open(marker, "w").close()
            time.sleep(600)
    real_fsync(fd)
os.fsync = fsync
from dino_model.cli.main import main
sys.exit(main(argv))
"""


def _pretrain_args(data: Path, out: Path, *overrides: str) -> list[str]:
    return ["pretrain", "--config", "tiny", f"data.root={data}", f"train.output_dir={out}", *SMALL, *overrides]


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def one_epoch_run(small_digits: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of train.epochs=2 stopped after its first epoch; tests copy it before resuming."""
    out = tmp_path_factory.mktemp("one_epoch") / "run"
    fit(small_cfg(small_digits, out, "train.epochs=2", "train.stop_after_epochs=1", "train.saveckp_freq=0"))
    return out


@pytest.fixture
def stopped_run(one_epoch_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(one_epoch_run, tmp_path / "run"))


def test_a_run_killed_while_writing_a_checkpoint_resumes_cleanly(run_cli, small_digits: Path,
                                                                  tmp_path: Path):
    out, marker = tmp_path / "run", tmp_path / "in-second-fsync"
    args = _pretrain_args(small_digits, out, "train.epochs=3")
    proc = subprocess.Popen([sys.executable, "-c", STALL_IN_SECOND_FSYNC, str(marker), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 600
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the run never reached its second checkpoint"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert [p for p in _temporaries(out) if p.startswith(".checkpoint.pth.")], _temporaries(out)
    assert load_checkpoint(out / "checkpoint.pth")["epoch"] == 1
    assert [r["epoch"] for r in read_jsonl(out / "metrics.jsonl")] == [0, 1]  # epoch 1 runs again on resume

    assert run_cli([*args, "--resume"]) == 0
    assert _temporaries(out) == []
    assert [r["epoch"] for r in read_jsonl(out / "metrics.jsonl")] == [0, 1, 2]
    assert load_checkpoint(out / "checkpoint.pth")["epoch"] == 3


def test_only_this_runs_temporaries_in_its_own_folder_are_removed(tmp_path: Path):
    from dino_model.runtime.checkpoint import remove_stale_temporaries

    out, other = tmp_path / "run", tmp_path / "other"
    out.mkdir(), other.mkdir()
    ours = [".checkpoint.pth.k3_x9a0b", ".checkpoint0040.pth.abcdefgh", ".metrics.jsonl.0a1b2c3d"]
    theirs = [".model.onnx.abcdefgh", ".checkpoint.pth", "checkpoint.pth.abcdefgh", ".checkpoint.pth.toolongname",
              ".notes.txt"]
    for name in ours + theirs:
        (out / name).write_bytes(b"x")
    (other / ".checkpoint.pth.abcdefgh").write_bytes(b"x")
    removed = remove_stale_temporaries(out)
    assert sorted(p.name for p in removed) == sorted(ours)
    assert sorted(p.name for p in out.iterdir()) == sorted(theirs)
    assert (other / ".checkpoint.pth.abcdefgh").exists()


class _FullDisk:
    """A file object that takes `room` bytes, then fails as a full disk does."""

    def __init__(self, fh, room: int) -> None:
        self.fh, self.room = fh, room

    def write(self, data) -> int:
        if self.room < len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.fh.write(data)

    def __getattr__(self, name):
        return getattr(self.fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.fh.close()


def test_a_full_disk_keeps_the_previous_checkpoint_and_leaves_no_temporary(tmp_path: Path, monkeypatch):
    import torch

    path = tmp_path / "checkpoint.pth"
    save_atomic({"epoch": 1, "w": torch.zeros(10)}, path)
    before = path.read_bytes()
    real_fdopen = os.fdopen
    monkeypatch.setattr(atomic_module.os, "fdopen", lambda fd, mode: _FullDisk(real_fdopen(fd, mode), 4096))
    with pytest.raises(CheckpointError, match=r"cannot write .*checkpoint\.pth: No space left on device; "
                                              r"the previous checkpoint\.pth is kept unchanged"):
        save_atomic({"epoch": 2, "w": torch.ones(100_000)}, path)
    assert path.read_bytes() == before and _temporaries(tmp_path) == []
    with pytest.raises(CheckpointError, match="no earlier new.pth exists"):
        save_atomic({"w": torch.ones(100_000)}, tmp_path / "new.pth")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pth"]


def _user_namespaces() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-rm", "true"], capture_output=True, check=False).returncode == 0


@pytest.mark.skipif(not _user_namespaces(), reason="mounting a small tmpfs needs unshare and user namespaces")
def test_a_full_tmpfs_is_one_line_at_the_cli(small_digits: Path, tmp_path: Path):
    """A 3.5 MB tmpfs holds one 2.3 MB checkpoint but not a second beside it: the second epoch's save fails."""
    mount, kept = tmp_path / "mnt", tmp_path / "kept"
    mount.mkdir(), kept.mkdir()
    script = ('py=$1; keep=$2; shift 2; mount -t tmpfs -o size=3500k tmpfs "$0" && "$py" -m dino_model.cli "$@"; '
              'rc=$?; cp -a "$0"/. "$keep"/; exit $rc')
    args = _pretrain_args(small_digits, mount / "run", "train.epochs=2")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script, str(mount), sys.executable, str(kept), *args],
                          capture_output=True, text=True, timeout=900, check=False)
    lines = [line for line in proc.stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("dino-mlops: error: cannot write"), proc.stderr[-3000:]
    assert "No space left on device" in lines[0] and "kept unchanged" in lines[0]
    run = kept / "run"
    assert _temporaries(run) == [] and load_checkpoint(run / "checkpoint.pth")["epoch"] == 1


def test_divergence_before_any_checkpoint_says_none_was_written(small_digits: Path, tmp_path: Path, monkeypatch):
    original = DINOLoss.forward

    def diverging(self, student_output, teacher_output, epoch):
        return original(self, student_output, teacher_output, epoch) * float("nan")

    monkeypatch.setattr(DINOLoss, "forward", diverging)
    with pytest.raises(TrainingDivergedError, match=r"epoch 0, step 0; no checkpoint was written yet") as info:
        fit(small_cfg(small_digits, tmp_path, "train.epochs=2"))
    assert "kept" not in str(info.value) and not (tmp_path / "checkpoint.pth").exists()


def test_resume_refuses_changed_optimisation_settings(run_cli, stopped_run: Path, small_digits: Path,
                                                      capsys):
    before = (stopped_run / "checkpoint.pth").read_bytes()
    args = _pretrain_args(small_digits, stopped_run, "train.epochs=3", "optim.base_lr=0.01", "--resume")
    assert run_cli(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "optim.base_lr 0.005 -> 0.01" in err and "train.epochs 2 -> 3" in err and "--allow-config-change" in err
    assert (stopped_run / "checkpoint.pth").read_bytes() == before
    with pytest.raises(CheckpointError, match=r"another model: model.depth 2 -> 3"):
        fit(small_cfg(small_digits, stopped_run, "train.epochs=2", "train.saveckp_freq=0", "model.depth=3"),
            resume=True)
    with pytest.raises(ConfigError, match=r"loss.teacher_temp 0.04 -> 0.05"):
        fit(small_cfg(small_digits, stopped_run, "train.epochs=2", "train.saveckp_freq=0", "loss.teacher_temp=0.05",
                      "train.allow_config_change=false"), resume=True)


def test_resume_accepts_changes_where_files_go_and_how_data_is_read(stopped_run: Path, small_digits: Path,
                                                                    tmp_path: Path, caplog):
    moved = Path(shutil.move(stopped_run, tmp_path / "moved"))
    allowed = ["train.epochs=2", "train.saveckp_freq=0", "data.num_workers=1", "train.device=cpu",
               "train.log_every_steps=3", "monitor.entropy_min_frac=0.02", "eval.batch_size=7"]
    with pytest.raises(ConfigError, match=r"other settings: optim.base_lr 0.005 -> 0.01; resume with"):
        fit(small_cfg(small_digits, moved, *allowed, "optim.base_lr=0.01"), resume=True)
    with caplog.at_level(logging.INFO):
        fit(small_cfg(small_digits, moved, *allowed), resume=True)
    assert load_checkpoint(moved / "checkpoint.pth")["epoch"] == 2
    assert "resumed from" in caplog.text and "changed settings" not in caplog.text


def test_allow_config_change_resumes_with_a_warning(run_cli, stopped_run: Path, small_digits: Path,
                                                    capsys):
    args = _pretrain_args(small_digits, stopped_run, "train.epochs=3", "optim.base_lr=0.01", "--resume",
                          "--allow-config-change")
    assert run_cli(args) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if " WARNING " in line]
    assert len(warnings) == 1 and "changed settings" in warnings[0]
    assert "optim.base_lr 0.005 -> 0.01, train.epochs 2 -> 3" in warnings[0]
    state = load_checkpoint(stopped_run / "checkpoint.pth")
    assert state["epoch"] == 3 and state["config"]["optim"]["base_lr"] == 0.01
    assert [r["epoch"] for r in read_jsonl(stopped_run / "metrics.jsonl")] == [0, 1, 2]
