"""Training throughput: images/s of full DINO steps and the fraction of the machine's matmul peak.

A step is everything the training loop does per batch: teacher forward on the global crops,
student forward and backward on all crops, loss and centre update, per-parameter clipping,
the optimiser step and the EMA update (dino_model.train.loop.train_step). FLOPs per image are
counted by torch.utils.flop_counter on one step; the peak is measured here, in the same run, with
large square matrix multiplies sampled between the timed steps, so the fraction is a ratio of two
numbers taken on the same machine at the same time.

`--official PATH` adds the official DINO step (facebookresearch/dino, a checkout at PATH; imported
from there, not a dependency) as a second contender with the same configuration: its vit_tiny and
DINOHead, DINOLoss, `utils.get_params_groups` + `torch.optim.AdamW`, `utils.clip_gradients`,
`utils.cancel_gradients_last_layer` and its EMA loop, under the same `torch.autocast`. The two are
timed alternately, step by step, in one process (the first of each pair alternates too), so a
noisy, shared machine slows both alike; the speed ratio is the median of the per-step ratios.
Process-wide settings reach both: on CPU our trainer keeps freed memory for reuse
(`train.cpu_keep_freed_memory`, dino_model/runtime/cpu_memory.py), which then speeds up the
official step as well; `--default-malloc` compares both without it, and `--official-process` runs
the official step in a process of its own, still in lockstep with ours (each of its steps is timed
here from request to reply, which adds well under a millisecond).

    .venv/bin/python benchmarks/train_throughput.py                      # the default configurations
    .venv/bin/python benchmarks/train_throughput.py --precision bf16 --steps 10 --compile
    .venv/bin/python benchmarks/train_throughput.py --official /tmp/official_dino \
        --config "vit_tiny/4 32px+6x16px K=65536" --steps 10
    .venv/bin/python benchmarks/train_throughput.py --official /tmp/official_dino --precision bf16 \
        --config "vit_small/16 2x224px+10x96px K=65536" --batch 8
"""

from __future__ import annotations

import argparse
import importlib
import math
import multiprocessing
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from dino_model.config import TrainConfig, load_config
from dino_model.runtime.distributed import DistInfo
from dino_model.train.loop import build_trainer, train_step
from dino_model.train.schedules import effective_lr

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
EPOCH = 1  # past the last-layer freeze, so every parameter is updated


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


@dataclass
class Contender:
    """One training-step implementation: `step(it)` runs iteration `it` on fixed crops."""

    name: str
    step: Callable[[int], None]
    first_step_s: float = 0.0  # the first warm-up step (compilation included, when compiling)
    flops: float = 0.0
    times: list[float] = field(default_factory=list)
    count_flops: Callable[[int], float] | None = None  # for a step run elsewhere (another process)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_config(overrides: list[str], batch: int, precision: str, compile_: bool,
                 keep_memory: bool = True) -> TrainConfig:
    return load_config("tiny", overrides=[*overrides, f"train.batch_size={batch}", "model.out_dim=65536",
                                          "model.hidden_dim=2048", "model.bottleneck_dim=256",
                                          f"train.precision={precision}", f"train.compile={compile_}",
                                          f"train.cpu_keep_freed_memory={keep_memory}", "train.epochs=10"])


def fixed_crops(cfg: TrainConfig, device: torch.device) -> list[torch.Tensor]:
    b, g, lc = cfg.train.batch_size, cfg.crops.global_size, cfg.crops.local_size
    crops = [torch.randn(b, 3, g, g) for _ in range(2)] + [
        torch.randn(b, 3, lc, lc) for _ in range(cfg.crops.local_crops_number)]
    return [c.to(device) for c in crops]


def ours(cfg: TrainConfig, device: torch.device, crops: list[torch.Tensor]) -> Contender:
    trainer = build_trainer(cfg, DistInfo(rank=0, world_size=1, local_rank=0, device=device), steps_per_epoch=1000)
    return Contender("ours", lambda it: train_step(trainer, crops, EPOCH, it, Path("/dev/null")))


class _SingleProcess:
    """Stands in for torch.distributed in the official loss: its centre update all-reduces over an
    initialised process group, which in one process is the identity (as ours is without a group)."""

    @staticmethod
    def all_reduce(tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    @staticmethod
    def get_world_size() -> int:
        return 1


def load_official(path: Path) -> tuple:
    """The official modules (vision_transformer, utils, main_dino) from a checkout of facebookresearch/dino."""
    if not (path / "main_dino.py").is_file() or not (path / "vision_transformer.py").is_file():
        raise SystemExit(f"--official {path}: no main_dino.py and vision_transformer.py there; pass a checkout of "
                         f"facebookresearch/dino")
    sys.path.insert(0, str(path))
    warnings.filterwarnings("ignore", message=".*weight_norm.* is deprecated", category=FutureWarning)
    vits, utils, main_dino = (importlib.import_module(m) for m in ("vision_transformer", "utils", "main_dino"))
    main_dino.dist = _SingleProcess
    return vits, utils, main_dino


def official(cfg: TrainConfig, device: torch.device, crops: list[torch.Tensor], path: Path) -> Contender:
    """The official train_one_epoch body for one batch, with `cfg`'s model and optimisation settings."""
    vits, utils, main_dino = load_official(path)
    m, o, n_iter = cfg.model, cfg.optim, 1000
    if not m.arch.startswith("vit"):
        raise SystemExit(f"--official compares ViTs only, not model.arch={m.arch}")

    def vit(**kw) -> torch.nn.Module:  # the official vit_tiny/small/base arguments, at cfg's depth and width
        return vits.VisionTransformer(patch_size=m.patch_size, img_size=[m.img_size], embed_dim=m.embed_dim,
                                      depth=m.depth, num_heads=m.num_heads, mlp_ratio=4, qkv_bias=True,
                                      norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), **kw)

    def head(norm_last_layer: bool) -> torch.nn.Module:
        return vits.DINOHead(m.embed_dim, m.out_dim, use_bn=m.use_bn_in_head, norm_last_layer=norm_last_layer,
                             nlayers=m.head_layers, hidden_dim=m.hidden_dim, bottleneck_dim=m.bottleneck_dim)

    student = utils.MultiCropWrapper(vit(drop_path_rate=m.drop_path_rate), head(m.norm_last_layer)).to(device)
    teacher = utils.MultiCropWrapper(vit(), head(True)).to(device)
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad = False
    dino_loss = main_dino.DINOLoss(m.out_dim, 2 + cfg.crops.local_crops_number, cfg.loss.warmup_teacher_temp,
                                   cfg.loss.teacher_temp, cfg.loss.warmup_teacher_temp_epochs,
                                   cfg.train.epochs).to(device)
    optimizer = torch.optim.AdamW(utils.get_params_groups(student))
    lr = utils.cosine_scheduler(effective_lr(o.base_lr, cfg.train.batch_size), o.min_lr, cfg.train.epochs, n_iter,
                                warmup_epochs=o.warmup_epochs)
    wd = utils.cosine_scheduler(o.weight_decay, o.weight_decay_end, cfg.train.epochs, n_iter)
    momentum = utils.cosine_scheduler(o.momentum_teacher, 1, cfg.train.epochs, n_iter)
    precision = cfg.train.precision
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def step(it: int) -> None:
        for i, group in enumerate(optimizer.param_groups):
            group["lr"] = lr[it]
            if i == 0:
                group["weight_decay"] = wd[it]
        with torch.autocast(device.type, dtype=DTYPES[precision], enabled=precision != "fp32"):
            teacher_output = teacher(crops[:2])
            student_output = student(crops)
            loss = dino_loss(student_output, teacher_output, EPOCH)
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"official step: loss is {loss.item()}")
        optimizer.zero_grad()
        if scaler is None:
            loss.backward()
        else:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        utils.clip_gradients(student, o.clip_grad)
        utils.cancel_gradients_last_layer(EPOCH, student, o.freeze_last_layer_epochs)
        if scaler is None:
            optimizer.step()
        else:
            scaler.step(optimizer)
            scaler.update()
        with torch.no_grad():
            mom = momentum[it]
            for param_q, param_k in zip(student.parameters(), teacher.parameters(), strict=True):
                param_k.data.mul_(mom).add_((1 - mom) * param_q.detach().data)

    return Contender("official", step)


def _timed(c: Contender, it: int, device: torch.device) -> float:
    _sync(device)
    t = time.perf_counter()
    c.step(it)
    _sync(device)
    return time.perf_counter() - t


def measure(contenders: list[Contender], precision: str, steps: int, device: torch.device, warmup: int = 2) -> float:
    """Warm up and FLOP-count each contender, then time them alternately; the median matmul peak."""
    peak = MatmulPeak(DTYPES[precision], device)
    for c in contenders:
        c.first_step_s = _timed(c, 0, device)
        for i in range(1, warmup):
            c.step(i)
        c.flops = c.count_flops(warmup) if c.count_flops else _count_flops(c, warmup)
    for i in range(steps):
        peak.sample()
        order = contenders if i % 2 == 0 else contenders[::-1]
        for c in order:
            c.times.append(_timed(c, warmup + 1 + i, device))
    return peak.flops


def _count_flops(c: Contender, it: int) -> float:
    with FlopCounterMode(display=False) as counter:
        c.step(it)
    return counter.get_total_flops()


def _official_server(cfg: TrainConfig, device: torch.device, path: Path, conn: Connection) -> None:
    """Child process: build the official step on the same crops, then run ("step" | "flops", it) requests."""
    torch.manual_seed(0)
    c = official(cfg, device, fixed_crops(cfg, device), path)
    conn.send("ready")
    while (request := conn.recv()) is not None:
        op, it = request
        conn.send(_timed(c, it, device) if op == "step" else _count_flops(c, it))


def official_process(cfg: TrainConfig, device: torch.device, path: Path) -> tuple[Contender, Callable[[], None]]:
    """The official step in a process of its own (none of our process-wide settings), driven in lockstep;
    the contender and a function that stops the process."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_official_server, args=(cfg, device, path, child), daemon=True)
    proc.start()
    if parent.recv() != "ready":  # built before our warm-up starts, so the two do not overlap
        raise RuntimeError("the official step's process did not start")

    def ask(op: str, it: int) -> float:
        parent.send((op, it))
        return parent.recv()

    def stop() -> None:
        parent.send(None)
        proc.join(timeout=60)

    contender = Contender("official (own process)", lambda it: ask("step", it),
                          count_flops=lambda it: ask("flops", it))
    return contender, stop


def report(name: str, precision: str, batch: int, contenders: list[Contender], peak: float) -> None:
    for c in contenders:
        step = statistics.median(c.times)
        achieved = c.flops / step
        print(f"| {name} | {c.name} | {precision} | {batch} | {step:.3f} ({min(c.times):.3f}-{max(c.times):.3f}) | "
              f"{batch / step:.1f} | {c.flops / batch / 1e9:.3f} | {achieved / 1e9:.1f} | {peak / 1e9:.1f} | "
              f"{100 * achieved / peak:.0f}% | {c.first_step_s:.1f} |", flush=True)
    if len(contenders) == 2:
        ratios = sorted(b / a for a, b in zip(contenders[0].times, contenders[1].times, strict=True))
        print(f"speed {contenders[0].name}/{contenders[1].name} ({name}, {precision}): median "
              f"{statistics.median(ratios):.2f}x over {len(ratios)} alternating steps "
              f"(range {ratios[0]:.2f}-{ratios[-1]:.2f})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", nargs="+", default=None,
                        help="fp32 bf16 fp16 (default: fp32 bf16 on CPU; fp32 bf16 fp16 on CUDA)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before the FLOP count")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--config", nargs="*", default=None, help="names from CONFIGS and GPU_CONFIGS")
    parser.add_argument("--official", type=Path, default=None,
                        help="a checkout of facebookresearch/dino: time its step alternately with ours")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--batch", type=int, default=None, help="images per step instead of the configuration's")
    parser.add_argument("--official-process", action="store_true",
                        help="run the official step in a process of its own, in lockstep with ours (timed from "
                             "here, request to reply), so that our process-wide settings do not reach it")
    parser.add_argument("--default-malloc", action="store_true",
                        help="CPU: train.cpu_keep_freed_memory=false (the setting is per process: it reaches "
                             "the official contender too)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.precision = args.precision or (["fp32", "bf16", "fp16"] if device.type == "cuda" else ["fp32", "bf16"])
    configs = {**CONFIGS, **GPU_CONFIGS}
    args.config = args.config or list(configs if device.type == "cuda" else CONFIGS)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"device {device} ({where}), torch {torch.__version__}")
    print("| configuration | contender | precision | batch | step s, median (min-max) | images/s | GFLOP/image | "
          "GFLOP/s | peak GFLOP/s | % of peak | first step s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.config:
        overrides, batch = configs[name]
        batch = args.batch or batch
        for p in args.precision:
            cfg = bench_config(overrides, batch, p, args.compile, keep_memory=not args.default_malloc)
            torch.manual_seed(0)
            crops = fixed_crops(cfg, device)
            contenders = [ours(cfg, device, crops)]
            stop = None
            if args.official and args.official_process:
                contender, stop = official_process(cfg, device, args.official)
                contenders.append(contender)
            elif args.official:
                contenders.append(official(cfg, device, crops, args.official))
            peak = measure(contenders, p, args.steps, device, args.warmup)
            report(name, p, batch, contenders, peak)
            if stop:
                stop()


if __name__ == "__main__":
    main()
