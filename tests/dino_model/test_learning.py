"""It learns: a short CPU run on digits beats the same backbone at random initialisation, without collapse.

One pretraining run (the demo config, `digits_vit_tiny`) is shared by the k-NN and the linear-probe
checks; both compare against a backbone of the same architecture initialised from the run's seed.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from dino_model.config import TrainConfig, load_config
from dino_model.eval.features import extract_features
from dino_model.eval.knn import knn_classify
from dino_model.eval.linear import LinearProbeConfig
from dino_model.eval.linear_run import probe_backbone
from dino_model.models.backbone import build_backbone
from dino_model.models.loading import load_backbone
from dino_model.train.loop import fit

PROBE = LinearProbeConfig(epochs=200, lr=1.0, augment=False)  # cached features: seconds on a CPU


@dataclass
class Run:
    cfg: TrainConfig
    metrics: dict
    trained: torch.nn.Module
    random: torch.nn.Module


@pytest.fixture(scope="module")
def run(digits_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    out = tmp_path_factory.mktemp("learning")
    cfg = load_config("digits_vit_tiny", overrides=[f"data.root={digits_root / 'train'}", f"train.output_dir={out}",
                                                    "data.knn_train=''", "data.knn_val=''"])
    torch.manual_seed(cfg.train.seed)
    random_backbone, _ = build_backbone(cfg.model, drop_path_rate=0.0)
    result = fit(cfg)
    trained, _ = load_backbone(result.checkpoint)
    return Run(cfg, result.final_metrics, trained, random_backbone.eval())


def _knn_top1(backbone: torch.nn.Module, root: Path, cfg: TrainConfig) -> float:
    train = extract_features(backbone, root / "train", cfg.eval)
    val = extract_features(backbone, root / "val", cfg.eval)
    return knn_classify(*train, *val, ks=[20])[20]["top1"]


@pytest.mark.slow
def test_teacher_is_not_collapsed(run: Run) -> None:
    log_k = math.log(run.cfg.model.out_dim)
    assert not run.metrics["collapsed"]
    assert 0.05 * log_k < run.metrics["teacher_entropy"] < 0.95 * log_k


@pytest.mark.slow
def test_digits_knn_clearly_beats_random_init(run: Run, digits_root: Path) -> None:
    random_top1 = _knn_top1(run.random, digits_root, run.cfg)
    trained_top1 = _knn_top1(run.trained, digits_root, run.cfg)
    print(f"k-NN top-1 on digits: random init {random_top1:.1f}%, trained {trained_top1:.1f}%")
    assert trained_top1 >= random_top1 + 8.0  # measured in docs/training.md


@pytest.mark.slow
def test_digits_linear_probe_beats_chance_and_random_init(run: Run, digits_root: Path) -> None:
    dirs = {"train_dir": digits_root / "train", "val_dir": digits_root / "val"}
    random_top1 = probe_backbone(run.random, run.cfg.model, run.cfg.eval, probe=PROBE, **dirs)["best"]["top1"]
    trained_top1 = probe_backbone(run.trained, run.cfg.model, run.cfg.eval, probe=PROBE, **dirs)["best"]["top1"]
    print(f"linear top-1 on digits: random init {random_top1:.1f}%, trained {trained_top1:.1f}%")
    assert trained_top1 >= 50.0  # chance is 10%
    assert trained_top1 >= random_top1 + 5.0
