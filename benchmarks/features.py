"""Frozen-feature extraction and k-NN: features/s and peak memory as the set grows.

Extraction holds one batch of images at a time and k-NN one chunk of test rows against the whole
bank, so peak memory should grow only with the N x D feature matrix (4 D bytes per image), not
with N images or an N x N similarity matrix. `extract` is the linear probe's extraction on images
generated in memory; `extract_features` (with --folder) is the k-NN extraction on written PNGs,
disk reads included. Every row runs in a fresh process, so its peak RSS (ru_maxrss) is its own;
`base` is the RSS once imports, model and inputs are ready, and `added` is what the measured work
put on top. Images are random pixels in 10 classes; the backbone is
randomly initialised (speed does not depend on the weights).

    .venv/bin/python benchmarks/features.py                            # tiny model, 2000 and 8000 images
    .venv/bin/python benchmarks/features.py --sizes 2000 32000 --chunk 256 8192 --folder
    .venv/bin/python benchmarks/features.py --model vit_small --sizes 256 1024
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import resource
import time
from typing import Any

MODELS = {
    "tiny": ("tiny", []),  # ViT depth 2, width 64, patch 4, at 32 px
    "vit_small": ("tiny", ["model.arch=vit_small", "model.patch_size=16", "model.img_size=224", "model.depth=null",
                           "model.embed_dim=null", "model.num_heads=null", "eval.image_size=224",
                           "eval.resize_size=256", "eval.batch_size=64"]),
}


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def extraction_job(model: str, size: int, threads: int) -> dict[str, Any]:
    import numpy as np
    import torch
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset

    from dino_model.config import load_config
    from dino_model.data.transforms import eval_transform
    from dino_model.eval.linear import extract_probe_features
    from dino_model.models.backbone import build_backbone

    torch.set_num_threads(threads)
    name, overrides = MODELS[model]
    cfg = load_config(name, overrides=overrides)
    backbone, dim = build_backbone(cfg.model, drop_path_rate=0.0)
    transform, side = eval_transform(cfg.eval), cfg.eval.resize_size

    class GeneratedImages(Dataset):
        def __len__(self) -> int:
            return size

        def __getitem__(self, i: int):
            pixels = np.random.default_rng(i).integers(0, 255, (side, side, 3), dtype=np.uint8)
            return transform(Image.fromarray(pixels)), i % 10

    loader = DataLoader(GeneratedImages(), batch_size=cfg.eval.batch_size)
    base = _current_rss_mib()
    start = time.perf_counter()
    feats, _ = extract_probe_features(backbone.eval(), loader, n_last_blocks=1, avgpool=False)
    seconds = time.perf_counter() - start
    return {"phase": "extract", "n": size, "dim": dim, "batch/chunk": cfg.eval.batch_size, "seconds": seconds,
            "per_s": size / seconds, "base": base, "peak": _rss_mib(), "matrix": feats.numel() * 4 / 2**20}


def folder_job(model: str, size: int, threads: int) -> dict[str, Any]:
    """dino_model.eval.features.extract_features (what k-NN uses) on a folder of generated PNGs."""
    import tempfile
    from pathlib import Path

    import numpy as np
    import torch
    from PIL import Image

    from dino_model.config import load_config
    from dino_model.eval.features import extract_features
    from dino_model.models.backbone import build_backbone

    torch.set_num_threads(threads)
    name, overrides = MODELS[model]
    cfg = load_config(name, overrides=overrides)
    backbone, dim = build_backbone(cfg.model, drop_path_rate=0.0)
    side = cfg.eval.resize_size
    with tempfile.TemporaryDirectory(prefix="dino-bench-") as root:
        for i in range(size):
            folder = Path(root) / str(i % 10)
            folder.mkdir(exist_ok=True)
            pixels = np.random.default_rng(i).integers(0, 255, (side, side, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:06d}.png")
        base = _current_rss_mib()
        start = time.perf_counter()
        feats, _ = extract_features(backbone, root, cfg.eval)
        seconds = time.perf_counter() - start
    return {"phase": "extract_features", "n": size, "dim": dim, "batch/chunk": cfg.eval.batch_size,
            "seconds": seconds, "per_s": size / seconds, "base": base, "peak": _rss_mib(),
            "matrix": feats.numel() * 4 / 2**20}


def knn_job(size: int, dim: int, chunk: int, threads: int) -> dict[str, Any]:
    import torch

    from dino_model.eval.knn import knn_classify

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    train, test = torch.randn(size, dim, generator=gen), torch.randn(size // 4, dim, generator=gen)
    train_y, test_y = torch.randint(0, 10, (size,), generator=gen), torch.randint(0, 10, (size // 4,), generator=gen)
    base = _current_rss_mib()
    start = time.perf_counter()
    knn_classify(train, train_y, test, test_y, ks=(10, 20), chunk_size=chunk, num_classes=10)
    seconds = time.perf_counter() - start
    return {"phase": "knn", "n": size, "dim": dim, "batch/chunk": chunk, "seconds": seconds,
            "per_s": len(test) / seconds, "base": base, "peak": _rss_mib(),
            "matrix": (train.numel() + test.numel()) * 4 / 2**20}


def run_isolated(fn, *args) -> dict[str, Any]:
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000], help="images in the set")
    parser.add_argument("--chunk", type=int, nargs="+", default=[1024], help="k-NN test rows per block")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--folder", action="store_true",
                        help="also time dino_model.eval.features.extract_features on written PNGs (disk reads)")
    args = parser.parse_args()
    rows = []
    for size in args.sizes:
        rows.append(run_isolated(extraction_job, args.model, size, args.threads))
        if args.folder:
            rows.append(run_isolated(folder_job, args.model, size, args.threads))
        rows += [run_isolated(knn_job, size, rows[-1]["dim"], chunk, args.threads) for chunk in args.chunk]
    print(f"# {args.model}, {args.threads} threads, {platform.processor() or platform.machine()}, "
          f"{mp.cpu_count()} CPUs; per_s = images (extract) or test queries (knn) per second; MiB")
    header = ("phase", "n", "dim", "batch/chunk", "seconds", "per_s", "base", "peak", "added", "matrix")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        r["added"] = r["peak"] - r["base"]
        cells = [f"{r[h]:.1f}" if isinstance(r[h], float) else str(r[h]) for h in header]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
