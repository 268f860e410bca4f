"""Does bf16 autocast learn as well as fp32 on a CPU? The demo run in both precisions, then k-NN top-1.

Trains `digits_vit_tiny` (the demo, seed from its config) once with `train.precision=fp32` and once
with `bf16`, one after the other in this process, and scores both teachers with the weighted k-NN
(k = 10 and 20) on the 360 validation digits; `--precisions bf16` alone runs one of them, so the
two can run side by side in two processes (`--threads 1` each). Prints one JSON line per precision: k-NN top-1, final
loss and teacher entropy, training seconds. The numbers recorded in docs/training.md come from here.

    .venv/bin/python benchmarks/bf16_learning.py --out runs/bf16_learning
    .venv/bin/python benchmarks/bf16_learning.py --precisions fp32 --epochs 4 --threads 1 &
    .venv/bin/python benchmarks/bf16_learning.py --precisions bf16 --epochs 4 --threads 1
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from dino_model.config import load_config
from dino_model.data.materialize import materialize
from dino_model.eval.features import extract_features
from dino_model.eval.knn import knn_classify
from dino_model.logs import setup_logging
from dino_model.models.loading import load_backbone
from dino_model.train.loop import fit

logger = logging.getLogger("bf16_learning")


def train_and_score(precision: str, digits: Path, out: Path, epochs: int | None = None) -> dict:
    """One demo run in `precision` (`epochs` if given, else the demo's 12), scored by k-NN on the validation digits."""
    overrides = [f"data.root={digits / 'train'}", f"train.output_dir={out}", "data.knn_train=''", "data.knn_val=''",
                 f"train.precision={precision}"] + ([f"train.epochs={epochs}"] if epochs else [])
    cfg = load_config("digits_vit_tiny", overrides=overrides)
    start = time.perf_counter()
    result = fit(cfg)
    train_s = time.perf_counter() - start
    backbone, _ = load_backbone(result.checkpoint)
    train = extract_features(backbone, digits / "train", cfg.eval)
    val = extract_features(backbone, digits / "val", cfg.eval)
    knn = knn_classify(*train, *val, ks=[10, 20])
    return {"precision": precision, "epochs": cfg.train.epochs, "knn_top1_k10": knn[10]["top1"],
            "knn_top1_k20": knn[20]["top1"],
            "train_s": round(train_s, 1), "final": {k: result.final_metrics.get(k) for k in
                                                    ("loss", "teacher_entropy", "collapsed")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bf16_learning")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--epochs", type=int, default=None, help="shorter than the demo's 12 on a busy machine")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (e.g. 1 per run, runs side by side)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    setup_logging(logging.WARNING)
    out = Path(args.out)
    digits = out / "digits"
    if not (digits / "val").exists():
        materialize("digits", digits)
    for precision in args.precisions:
        print(json.dumps(train_and_score(precision, digits, out / precision, args.epochs)), flush=True)


if __name__ == "__main__":
    main()
