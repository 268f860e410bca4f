"""Two gloo processes with batch B reach the same teacher as one process with batch 2B."""

import os

import torch

from dino_model.runtime.checkpoint import load_checkpoint
from dino_model.train.loop import fit
from dino_model.train.worker import launch_training

from .conftest import small_cfg


def test_two_processes_equal_one_process_with_double_batch(small_digits, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    fit(small_cfg(small_digits, tmp_path / "one", "train.batch_size=16", "train.epochs=1"))
    launch_training(small_cfg(small_digits, tmp_path / "two", "train.batch_size=8", "train.epochs=1"), nproc=2)
    one = load_checkpoint(tmp_path / "one" / "checkpoint.pth")
    two = load_checkpoint(tmp_path / "two" / "checkpoint.pth")
    assert one["iteration"] == two["iteration"] == 76 // 16
    for key, ref in one["teacher"].items():
        torch.testing.assert_close(two["teacher"][key], ref, atol=1e-5, rtol=0, msg=key)
    torch.testing.assert_close(two["dino_loss"]["center"], one["dino_loss"]["center"], atol=1e-5, rtol=0)
    assert not os.environ.get("RANK")  # the parent never joined a process group
