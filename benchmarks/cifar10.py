"""CIFAR-10 subset under a stated CPU budget: k-NN and linear top-1, trained vs random init, and DAVIS J&F.

Pretrains the demo-sized ViT (digits_vit_tiny settings, with the paper's flips, colour jitter and
solarisation back on, since these are natural colour images) on the 10,000-image CIFAR-10 training subset
of ../shared/datasets for a fixed number of epochs, then scores the teacher backbone and the same
backbone at random initialisation with the weighted k-NN (k = 20) and a linear probe (cached
features) on the 10,000 test images, and propagates labels on the DAVIS 2016 sequences with it.

    .venv/bin/python benchmarks/cifar10.py --epochs 5 --out runs/cifar10
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import torch

from dino_model.config import load_config
from dino_model.eval.davis.config import DavisConfig
from dino_model.eval.davis.run import run_davis_eval
from dino_model.eval.features import extract_features
from dino_model.eval.knn import knn_classify
from dino_model.eval.linear import LinearProbeConfig
from dino_model.eval.linear_run import run_linear_eval
from dino_model.logs import setup_logging
from dino_model.models.backbone import build_backbone
from dino_model.runtime.checkpoint import save_atomic
from dino_model.train.loop import fit

SHARED = Path(os.environ.get("DINO_SHARED_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets"))


def knn_top1(backbone, cfg, root: Path) -> float:
    train = extract_features(backbone, root / "train", cfg.eval)
    test = extract_features(backbone, root / "test", cfg.eval)
    return knn_classify(*train, *test, ks=[20])[20]["top1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", default="runs/cifar10")
    parser.add_argument("--eval-only", action="store_true", help="score the checkpoint already in --out")
    args = parser.parse_args()
    setup_logging(logging.WARNING)
    root, out = SHARED / "cifar10_jpg", Path(args.out)
    natural_images = ["crops.flip_p=0.5", "crops.color_jitter_p=0.8", "crops.solarize_p=0.2"]
    cfg = load_config("digits_vit_tiny", overrides=[f"data.root={root / 'train'}", f"train.output_dir={out}",
                                                   f"train.epochs={args.epochs}", "train.batch_size=64",
                                                   *natural_images])
    start = time.perf_counter()
    if not args.eval_only:
        fit(cfg)
    train_s = time.perf_counter() - start
    random_backbone, _ = build_backbone(cfg.model, drop_path_rate=0.0)
    random_ckpt = out / "random-init.pth"
    state = torch.load(out / "checkpoint.pth", weights_only=True)
    state["teacher"] = {f"backbone.{k}": v for k, v in random_backbone.state_dict().items()}
    save_atomic(state, random_ckpt)
    probe = LinearProbeConfig(epochs=100, lr=1.0, augment=False)
    rows = {}
    for name, ckpt in (("DINO", out / "checkpoint.pth"), ("random init", random_ckpt)):
        from dino_model.models.loading import load_backbone

        backbone, _ = load_backbone(ckpt)
        lin = run_linear_eval(ckpt, cfg.eval, train_dir=root / "train", val_dir=root / "test", probe=probe,
                              output=out / f"linear-{name.replace(' ', '_')}.json")
        davis = run_davis_eval(ckpt, DavisConfig(annotations="Annotations_indexed", short_side=96, max_frames=20),
                               davis_root=SHARED / "davis2016_subset", output_dir=out / f"davis-{name[:6]}")
        rows[name] = {"knn_top1": knn_top1(backbone, cfg, root), "linear_top1": lin["metrics"]["linear_top1"],
                      "davis_jf_mean": davis["metrics"]["davis_jf_mean"]}
    epochs_done = torch.load(out / "checkpoint.pth", weights_only=True)["epoch"]
    print(f"pretraining: {epochs_done} epochs on 10,000 images ({train_s / 60:.1f} min in this call) "
          f"({torch.get_num_threads()} threads)")
    print("| backbone | k-NN top-1 (k=20) | linear top-1 | DAVIS 2016 J&F (4 seq., 20 frames, 96 px) |")
    print("|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['knn_top1']:.1f}% | {r['linear_top1']:.1f}% | {r['davis_jf_mean']:.3f} |")
    (out / "cifar10_summary.json").write_text(json.dumps({"train_seconds": train_s, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
