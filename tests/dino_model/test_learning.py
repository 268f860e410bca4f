"""It learns: a short CPU run on digits beats the same backbone at random initialisation, without collapse."""

import math

import pytest

from dino_model.config import load_config
from dino_model.eval.features import extract_features
from dino_model.eval.knn import knn_classify
from dino_model.models.backbone import build_backbone
from dino_model.models.loading import load_backbone
from dino_model.train.loop import fit


def _knn_top1(backbone, root, cfg) -> float:
    train = extract_features(backbone, root / "train", cfg.eval)
    val = extract_features(backbone, root / "val", cfg.eval)
    return knn_classify(*train, *val, ks=[20])[20]["top1"]


@pytest.mark.slow
def test_digits_knn_beats_random_init_without_collapse(digits_root, tmp_path):
    cfg = load_config("digits_vit_tiny", overrides=[f"data.root={digits_root / 'train'}",
                                                    f"train.output_dir={tmp_path}"])
    result = fit(cfg)
    entropy = result.final_metrics["teacher_entropy"]
    assert not result.final_metrics["collapsed"]
    assert 0.05 * math.log(cfg.model.out_dim) < entropy < 0.95 * math.log(cfg.model.out_dim)
    random_backbone, _ = build_backbone(cfg.model, drop_path_rate=0.0)
    trained_backbone, _ = load_backbone(result.checkpoint)
    random_top1 = _knn_top1(random_backbone, digits_root, cfg)
    trained_top1 = _knn_top1(trained_backbone, digits_root, cfg)
    print(f"k-NN top-1 on digits: random init {random_top1:.1f}%, trained {trained_top1:.1f}%")
    assert trained_top1 >= random_top1 + 3.0  # measured: 48.1% vs 42.5% (docs/training.md)
