"""What packing an image folder into tar shards saves DVC, and what it costs (or saves) the loader.

Generates `--images` small random JPEGs (32-64 px, in `--classes` class folders) into a temporary
folder, packs them with `dino-mlops data shard`'s code, and measures:

- `dvc add + push`: a fresh DVC repository (no git) per layout, the folder of files or the folder
  of shards as data/, `dvc add data` then `dvc push` to a local directory remote; per image and the
  ratio files / shards;
- loader images/s over one epoch, one process (`--workers` 0) or more, batch `--batch-size`:
  `open` is building the source (the folder scan decodes every file once to skip unreadable ones;
  the shards read shards.json and stat each shard), `decode` reads and decodes every image, and
  `multi-crop` also builds the default DINO crops (2 x 224 + 8 x 96) for the first `--crop-images`.

Numbers go to docs/data.md ("Sharded data").

    .venv/bin/python benchmarks/shards.py                      # 20,000 images
    .venv/bin/python benchmarks/shards.py --images 2000 --workers 2
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dino_model.config import CropConfig
from dino_model.data.datasets import ImageFolderDataset
from dino_model.data.loaders import SeededMultiCropDataset
from dino_model.data.shard_stream import ShardImages, ShardMultiCropDataset
from dino_model.data.shards import pack_folder
from dino_model.data.transforms import MultiCropTransform


def write_jpegs(root: Path, n: int, classes: int, seed: int = 0) -> int:
    """n random JPEGs of 32-64 px per side in `classes` folders; returns their total bytes."""
    rng = np.random.default_rng(seed)
    total = 0
    for i in range(n):
        h, w = rng.integers(32, 65, 2)
        path = root / f"class{i % classes:03d}" / f"img{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, quality=90)
        total += path.stat().st_size
    return total


def dvc_add_push(data: Path, work: Path) -> tuple[float, float]:
    """Seconds of `dvc add data` and of `dvc push`, in a fresh git-less repository holding `data`."""
    from dvc.repo import Repo

    from dino_model.versioning import init_repo

    repo_root = work / "repo"
    init_repo(repo_root, remote_dir=work / "remote")
    data.rename(repo_root / "data")
    repo = Repo(str(repo_root))
    try:
        start = time.perf_counter()
        repo.add(str(repo_root / "data"))
        added = time.perf_counter()
        repo.push()
        pushed = time.perf_counter()
    finally:
        repo.close()
    (repo_root / "data").rename(data)
    return added - start, pushed - added


class DecodeOnly:
    """A 1-element 'crop' list: the loader decodes, the benchmark does not transform."""

    def __call__(self, image: Image.Image) -> list[torch.Tensor]:
        return [torch.tensor([image.size[0]])]


def images_per_s(build: Callable[[], Any], *, batch_size: int, workers: int, limit: int) -> tuple[float, float, int]:
    """(seconds to build the dataset, images/s over its first `limit` images, images seen)."""
    start = time.perf_counter()
    dataset = build()
    opened = time.perf_counter()
    seen = 0
    for crops, _, _ in DataLoader(dataset, batch_size=batch_size, num_workers=workers, drop_last=True):
        seen += crops[0].shape[0]
        if seen >= limit:
            break
    return opened - start, seen / (time.perf_counter() - opened), seen


def folder_source(src: Path, transform: Callable[[Image.Image], Any]) -> Callable[[], Any]:
    return lambda: SeededMultiCropDataset(ImageFolderDataset(src), transform, 0)


def shard_source(shards: Path, transform: Callable[[Image.Image], Any], batch_size: int) -> Callable[[], Any]:
    return lambda: ShardMultiCropDataset(ShardImages(str(shards)), transform, 0, batch_size=batch_size)


def loader_rows(src: Path, shards: Path, args: argparse.Namespace) -> list[tuple[str, str, float, float, int]]:
    rows = []
    for name, transform, limit in (("decode", DecodeOnly(), args.images),
                                   ("multi-crop", MultiCropTransform(CropConfig()), args.crop_images)):
        for source, build in (("folder", folder_source(src, transform)),
                              ("shards", shard_source(shards, transform, args.batch_size))):
            opened, rate, seen = images_per_s(build, batch_size=args.batch_size, workers=args.workers, limit=limit)
            rows.append((source, name, opened, rate, seen))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--shard-size", type=int, default=64 * 2**20, help="bytes per shard (default 64 MiB)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--crop-images", type=int, default=256, help="images timed with the multi-crop transform")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="shards-bench-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("DVC_SITE_CACHE_DIR", str(work / "dvc-site"))
        os.environ.setdefault("DVC_NO_ANALYTICS", "1")
        start = time.perf_counter()
        size = write_jpegs(work / "src", args.images, args.classes)
        generated = time.perf_counter() - start
        start = time.perf_counter()
        index = pack_folder(work / "src", work / "shards", shard_bytes=args.shard_size)
        packed = time.perf_counter() - start
        print(f"{args.images} JPEGs ({size / 2**20:.1f} MiB, generated in {generated:.1f} s) -> "
              f"{len(index.shards)} shard(s) packed in {packed:.1f} s; {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPUs, torch {torch.__version__}")
        timings = {}
        for layout in ("src", "shards"):
            timings[layout] = dvc_add_push(work / layout, work / f"dvc-{layout}")
        print(f"\n{'layout':<7} | {'files':>6} | {'add s':>7} | {'push s':>7} | {'ms/image':>8}")
        for layout, files in (("src", args.images), ("shards", len(index.shards) + 1)):
            add, push = timings[layout]
            print(f"{'files' if layout == 'src' else 'shards':<7} | {files:>6} | {add:>7.2f} | {push:>7.2f} | "
                  f"{1000 * (add + push) / args.images:>8.3f}")
        ratio = sum(timings["src"]) / sum(timings["shards"])
        print(f"files / shards: {ratio:.0f}x the add + push time per image")
        print(f"\n{'source':<7} | {'transform':<10} | {'open s':>7} | {'images/s':>9} | {'images':>7}  "
              f"(batch {args.batch_size}, {args.workers} worker(s))")
        for source, name, opened, rate, seen in loader_rows(work / "src", work / "shards", args):
            print(f"{source:<7} | {name:<10} | {opened:>7.2f} | {rate:>9.0f} | {seen:>7}")


if __name__ == "__main__":
    main()
