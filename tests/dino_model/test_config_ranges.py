"""Out-of-range and unknown values are refused at load time with one line naming the key and what is allowed."""

import subprocess
import sys

import pytest

from dino_model.config import load_config
from dino_model.errors import ConfigError

# (a value outside the range, the error naming it, the nearest value inside the range)
CASES = [
    ("crops.local_crops_number=-3", r"crops\.local_crops_number=-3 must be an integer >= 0",
     "crops.local_crops_number=0"),
    ("model.patch_size=0", r"model\.patch_size=0 must be an integer >= 1", "model.patch_size=1"),
    ("data.num_workers=-1", r"data\.num_workers=-1 must be an integer >= 0", "data.num_workers=0"),
    ("train.device=tpu", r"train\.device='tpu' is not one of auto, cpu, cuda", "train.device=cpu"),
    ("optim.base_lr=-0.001", r"optim\.base_lr=-0\.001 must be a finite number > 0", "optim.base_lr=1e-9"),
    ("optim.base_lr=nan", r"optim\.base_lr=nan must be a finite number > 0", "optim.base_lr=0.01"),
    ("optim.min_lr=-1e-6", r"optim\.min_lr=-1e-06 must be a finite number >= 0", "optim.min_lr=0"),
    ("train.epochs=-2", r"train\.epochs=-2 must be an integer >= 1", "train.epochs=1"),
    ("train.batch_size=0", r"train\.batch_size=0 must be an integer >= 1", "train.batch_size=1"),
    ("optim.momentum_teacher=1.2", r"optim\.momentum_teacher=1\.2 must be in \[0, 1\]", "optim.momentum_teacher=1"),
    ("loss.center_momentum=-0.1", r"loss\.center_momentum=-0\.1 must be in \[0, 1\]", "loss.center_momentum=0"),
    ("loss.teacher_temp=0", r"loss\.teacher_temp=0\.0 must be a finite number > 0", "loss.teacher_temp=0.001"),
    ("loss.warmup_teacher_temp=-0.04", r"loss\.warmup_teacher_temp=-0\.04 must be a finite number > 0",
     "loss.warmup_teacher_temp=0.01"),
    ("loss.student_temp=-0.1", r"loss\.student_temp=-0\.1 must be a finite number > 0", "loss.student_temp=0.5"),
    ("train.log_every_steps=0", r"train\.log_every_steps=0 must be an integer >= 1", "train.log_every_steps=1"),
    ("train.seed=-1", r"train\.seed=-1 must be an integer >= 0", "train.seed=0"),
    ("optim.clip_grad=-1", r"optim\.clip_grad=-1\.0 must be a finite number >= 0", "optim.clip_grad=0"),
    ("optim.weight_decay=-0.04", r"optim\.weight_decay=-0\.04 must be a finite number >= 0", "optim.weight_decay=0"),
    ("model.out_dim=1", r"model\.out_dim=1 must be an integer >= 2", "model.out_dim=2"),
    ("model.drop_path_rate=1.5", r"model\.drop_path_rate=1\.5 must be in \[0, 1\)", "model.drop_path_rate=0.9"),
    ("model.num_heads=3", r"model\.embed_dim=64 is not divisible by model\.num_heads=3", "model.num_heads=4"),
    ("eval.knn_k=[10,0]", r"eval\.knn_k=\[10, 0\] must hold integers >= 1", "eval.knn_k=[1]"),
    ("monitor.entropy_min_frac=1.5", r"monitor\.entropy_min_frac=1\.5 must be in \[0, 1\]",
     "monitor.entropy_min_frac=0.99"),
]


@pytest.mark.parametrize("override,message,edge", CASES, ids=[c[0] for c in CASES])
def test_load_config_names_the_key_and_the_allowed_range(override, message, edge):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", overrides=[override])
    load_config("tiny", overrides=[edge])  # the range is not drawn tighter than it needs to be


CLI_CASES = ["crops.local_crops_number=-3", "model.patch_size=0", "data.num_workers=-1", "train.device=tpu",
             "optim.base_lr=-1"]


@pytest.mark.parametrize("override", CLI_CASES)
def test_cli_pretrain_refuses_with_one_line(override, tmp_path, digits_root):
    """The real command in a child process: exit code 2, one line on stderr naming the key, no traceback."""
    key = override.split("=")[0]
    proc = subprocess.run(
        [sys.executable, "-m", "dino_model.cli", "pretrain", "--config", "tiny", f"data.root={digits_root / 'train'}",
         f"train.output_dir={tmp_path / 'run'}", "train.epochs=1", override],
        capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dino-mlops: error:") and key in lines[0], proc.stderr[-2000:]
    assert not (tmp_path / "run" / "checkpoint.pth").exists()
