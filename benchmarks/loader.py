"""Multi-crop loading speed: the PIL path (crops.backend=pil) vs the device-side path (crops.backend=gpu).

Images are ~500x375 JPEGs: frames of the shared DAVIS subset (../shared/datasets) resized to 500x375,
else generated ones (smooth colour fields with noise, JPEG quality 90). Each image becomes the
official 2x224 + N x96 crops (`--local-crops`, 10 by default). Rows:

- `pil item`: one SeededMultiCropDataset item (read, PIL decode, 12 PIL crops and tensors), what
  each loader worker core does per image with crops.backend=pil;
- `read bytes`: one SeededEncodedDataset item (read the file), the worker's share with crops.backend=gpu;
- `decode`: torchvision's JPEG decoder alone on the CPU, for scale;
- `gpu path on cpu`: decode + crops + augmentation of batches of `--batch` by GpuMultiCrop on the CPU;
- `gpu path on cuda` (when CUDA is present): the same on the GPU (nvJPEG decode), timed to the
  last kernel; `cpu s/img` is the training process's CPU time per image, so `images/s per core`
  says how many images one core of launching work keeps up with.

The training process's CPU cost of the device-side path is mostly launching kernels, which a CPU
cannot time; it can count them. `device ops per image` runs the crops and augmentation of one batch
on the meta device (shapes only), with the parameters drawn on the CPU as in training, and counts
the operations that touch the device (views excluded): on CUDA each is about one kernel launch.
Decoding is one batched nvJPEG call per batch, not counted.

Torch runs on `--threads` threads (1: per-core figures). Numbers go to docs/training.md.

    .venv/bin/python benchmarks/loader.py                      # 64 images, CPU rows (and CUDA when present)
    .venv/bin/python benchmarks/loader.py --images 512 --batch 256
"""

from __future__ import annotations

import argparse
import logging
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torchvision.io import ImageReadMode, decode_image

from dino_model.config import CropConfig
from dino_model.data.crop_params import crop_params, draw_uniforms
from dino_model.data.datasets import ImageFolderDataset
from dino_model.data.encoded import SeededEncodedDataset
from dino_model.data.gpu_crops import GpuMultiCrop
from dino_model.data.loaders import SeededMultiCropDataset
from dino_model.data.transforms import MultiCropTransform

SHARED_FRAMES = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "davis2016_subset" / "JPEGImages"
SIZE = (500, 375)


def write_images(folder: Path, n: int, seed: int) -> str:
    """n ~500x375 JPEGs in folder/all/; returns where they came from."""
    (folder / "all").mkdir(parents=True)
    frames = sorted(SHARED_FRAMES.rglob("*.jpg")) if SHARED_FRAMES.is_dir() else []
    rng = np.random.default_rng(seed)
    for k in range(n):
        if frames:
            with Image.open(frames[k * len(frames) // n]) as frame:
                image = frame.convert("RGB").resize(SIZE, Image.BICUBIC)
        else:
            image = Image.fromarray(_generated(rng))
        image.save(folder / "all" / f"{k:05d}.jpg", quality=90)
    return f"DAVIS frames resized to {SIZE[0]}x{SIZE[1]}" if frames else f"generated {SIZE[0]}x{SIZE[1]}"


def _generated(rng: np.random.Generator) -> np.ndarray:
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(SIZE, Image.BICUBIC)
    noisy = np.asarray(coarse, dtype=np.int16) + rng.integers(-12, 13, (SIZE[1], SIZE[0], 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def per_second(fn: Callable[[], int], repeats: int) -> tuple[float, float]:
    """(images per wall second, CPU seconds per image) over `repeats` calls of fn (each returns its image count)."""
    fn()  # warm-up: first-call allocations, lazy imports
    wall, cpu, images = time.perf_counter(), time.process_time(), 0
    for _ in range(repeats):
        images += fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return images / wall, cpu / images


class DeviceOpCounter(TorchDispatchMode):
    """Counts dispatched operations that compute on `device` (views, which launch nothing, are not counted)."""

    def __init__(self, device: str) -> None:
        super().__init__()
        self.device, self.ops = torch.device(device), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        view = func is torch.ops.aten._unsafe_view.default or any(
            r.alias_info is not None and not r.alias_info.is_write for r in func._schema.returns)
        tensors = [t for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)]
        self.ops += not view and any(t.device == self.device for t in tensors)
        return out


def device_ops_per_image(cfg: CropConfig, batch: int, size: tuple[int, int] = SIZE) -> float:
    """Device operations per image of GpuMultiCrop's crops and augmentation for one batch, counted on meta."""
    transform = GpuMultiCrop(cfg, "meta")
    images = [torch.empty(3, size[1], size[0], dtype=torch.uint8, device="meta") for _ in range(batch)]
    sizes = torch.tensor([[size[1], size[0]]] * batch)
    params = crop_params(draw_uniforms(list(range(batch)), len(transform.specs)), sizes, transform.specs, cfg)
    with DeviceOpCounter("meta") as counter:
        transform.crops(images, params)
    return counter.ops / batch


def collate(items: list) -> dict:
    return {"encoded": [i[0]["encoded"] for i in items], "seed": torch.tensor([i[0]["seed"] for i in items]),
            "path": [i[0]["path"] for i in items]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--local-crops", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cuda-repeats", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    cfg = CropConfig(local_crops_number=args.local_crops)
    with tempfile.TemporaryDirectory() as tmp:
        source = write_images(Path(tmp), args.images, args.seed)
        images = ImageFolderDataset(tmp)
        pil = SeededMultiCropDataset(images, MultiCropTransform(cfg), seed=0)
        encoded = SeededEncodedDataset(images, seed=0)
        items = [encoded[k] for k in range(len(encoded))]
        batches = [collate(items[k:k + args.batch]) for k in range(0, len(items) - args.batch + 1, args.batch)]
        data = [torch.frombuffer(bytearray(i[0]["encoded"]), dtype=torch.uint8) for i in items]
        print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} thread(s), "
              f"{len(images)} images ({source}), crops 2x{cfg.global_size} + {args.local_crops}x{cfg.local_size}, "
              f"batch {args.batch}")
        print(f"{'path':<18} | {'device':<6} | {'images/s':>9} | {'cpu s/img':>9} | images/s per core")
        rows = [
            ("pil item", "cpu", lambda: sum(1 for k in range(len(pil)) if pil[k]), 1),
            ("read bytes", "cpu", lambda: sum(1 for k in range(len(encoded)) if encoded[k]), 3),
            ("decode", "cpu", lambda: sum(1 for d in data if decode_image(d, mode=ImageReadMode.RGB).numel()), 3),
        ]
        cpu_crops = GpuMultiCrop(cfg, "cpu")
        rows.append(("gpu path on cpu", "cpu", lambda: sum(len(cpu_crops(b)[0][0]) for b in batches), 1))
        if torch.cuda.is_available():
            rows.append(("gpu path on cuda", "cuda", _cuda_run(cfg, batches), args.cuda_repeats))
        for name, device, fn, repeats in rows:
            rate, cpu_per_image = per_second(fn, repeats)
            print(f"{name:<18} | {device:<6} | {rate:>9.0f} | {cpu_per_image:>9.5f} | {1 / cpu_per_image:>8.0f}")
        print(f"device ops per image (crops + augmentation, batch {args.batch}): "
              f"{device_ops_per_image(cfg, args.batch):.1f}")


def _cuda_run(cfg: CropConfig, batches: list[dict]) -> Callable[[], int]:
    transform = GpuMultiCrop(cfg, "cuda")

    def run() -> int:
        n = sum(len(transform(b)[0][0]) for b in batches)
        torch.cuda.synchronize()
        return n

    return run


if __name__ == "__main__":
    main()
