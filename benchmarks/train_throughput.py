"""Training throughput: images/s of full DINO steps and the fraction of the machine's matmul peak.

A step is everything the training loop does per batch: teacher forward on the global crops,
student forward and backward on all crops, loss and centre update, per-parameter clipping,
the optimiser step and the EMA update (dino_model.train.loop.train_step). FLOPs per image are
counted by torch.utils.flop_counter on one step; the peak is measured here, in the same run, with
large square matrix multiplies sampled between the timed steps, so the fraction is a ratio of two
numbers taken on the same machine at the same time.

    .venv/bin/python benchmarks/train_throughput.py                      # the default configurations
    .venv/bin/python benchmarks/train_throughput.py --precision bf16 --steps 10 --compile
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from dino_model.config import load_config
from dino_model.runtime.distributed import DistInfo
from dino_model.train.loop import build_trainer, train_step

CONFIGS = {
    # name: (overrides, batch)
    "vit_tiny/4 32px+6x16px K=65536": (
        ["model.arch=vit_tiny", "model.patch_size=4", "model.img_size=32", "model.depth=12", "model.embed_dim=192",
         "model.num_heads=3", "crops.global_size=32", "crops.local_size=16", "crops.local_crops_number=6"],
        32,
    ),
    "tiny test model (depth 2, width 64)": ([], 32),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
GPU_CONFIGS = {  # the paper's ViT-S/16 multi-crop setting, per GPU; measured by default only when CUDA is present
    "vit_small/16 2x224px+10x96px K=65536": (
        ["model.arch=vit_small", "model.patch_size=16", "model.img_size=224", "model.depth=12", "model.embed_dim=384",
         "model.num_heads=6", "crops.global_size=224",
         "crops.local_size=96", "crops.local_crops_number=10"],
        64,
    ),
}


class MatmulPeak:
    """The machine's matmul rate for one dtype, sampled between training steps.

    A single up-front measurement drifts with clocks and neighbours (136 to 180 GFLOP/s on the same
    CPU); sampling right before every timed step and taking the median makes the fraction a ratio of
    two numbers taken under the same conditions.
    """

    def __init__(self, dtype: torch.dtype, device: torch.device, n: int = 2048) -> None:
        self.a, self.b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
        self.device, self.n, self.samples = device, n, []
        self.a @ self.b  # warm-up

    def sample(self, repeats: int = 3) -> None:
        times = []
        for _ in range(repeats):
            _sync(self.device)
            t = time.perf_counter()
            self.a @ self.b
            _sync(self.device)
            times.append(time.perf_counter() - t)
        self.samples.append(2 * self.n**3 / min(times))

    @property
    def flops(self) -> float:
        return statistics.median(self.samples)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(name: str, overrides: list[str], batch: int, precision: str, steps: int, compile_: bool,
            device: torch.device, warmup: int = 2) -> dict:
    cfg = load_config("tiny", overrides=[*overrides, f"train.batch_size={batch}", "model.out_dim=65536",
                                         "model.hidden_dim=2048", "model.bottleneck_dim=256",
                                         f"train.precision={precision}", f"train.compile={compile_}",
                                         "train.epochs=10"])
    dist = DistInfo(rank=0, world_size=1, local_rank=0, device=device)
    trainer = build_trainer(cfg, dist, steps_per_epoch=1000)
    g, lc = cfg.crops.global_size, cfg.crops.local_size
    crops = [torch.randn(batch, 3, g, g) for _ in range(2)] + [
        torch.randn(batch, 3, lc, lc) for _ in range(cfg.crops.local_crops_number)]
    ckpt = Path("/dev/null")
    peak = MatmulPeak(DTYPES[precision], device)
    for i in range(warmup):  # warm-up (and compilation)
        train_step(trainer, crops, 1, i, ckpt)
    with FlopCounterMode(display=False) as counter:
        train_step(trainer, crops, 1, warmup, ckpt)
    flops = counter.get_total_flops()
    times = []
    for i in range(steps):
        peak.sample()
        _sync(device)
        t = time.perf_counter()
        train_step(trainer, crops, 1, warmup + 1 + i, ckpt)
        _sync(device)
        times.append(time.perf_counter() - t)
    step = statistics.median(times)
    return {"name": name, "precision": precision, "batch": batch, "step_s": step, "images_per_s": batch / step,
            "gflop_per_image": flops / batch / 1e9, "achieved_flops": flops / step, "peak_flops": peak.flops}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before the FLOP count")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--config", nargs="*", default=None, help="names from CONFIGS and GPU_CONFIGS")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    configs = {**CONFIGS, **GPU_CONFIGS}
    args.config = args.config or list(configs if device.type == "cuda" else CONFIGS)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"device {device} ({where}), torch {torch.__version__}")
    print("| configuration | precision | batch | step (s) | images/s | GFLOP/image | GFLOP/s | peak GFLOP/s "
          "| % of peak |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.config:
        overrides, batch = configs[name]
        for p in args.precision:
            r = measure(name, overrides, batch, p, args.steps, args.compile, device, args.warmup)
            print(f"| {name} | {p} | {batch} | {r['step_s']:.3f} | {r['images_per_s']:.1f} | "
                  f"{r['gflop_per_image']:.3f} | {r['achieved_flops'] / 1e9:.1f} | {r['peak_flops'] / 1e9:.1f} | "
                  f"{100 * r['achieved_flops'] / r['peak_flops']:.0f}% |", flush=True)


if __name__ == "__main__":
    main()
