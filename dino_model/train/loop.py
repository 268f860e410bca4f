"""The DINO training loop: one process per device, any number of processes.

Step order follows the official `train_one_epoch`: set lr/wd from the schedules, teacher on the
global crops, student on all crops, loss (which updates the centre), a finite-loss guard,
backward, per-parameter clipping, last-layer freeze, optimiser step, EMA teacher update.
Randomness is re-seeded from (seed, epoch, rank) at each epoch start, so resuming from an
epoch's checkpoint continues exactly. Where a run starts (a checkpoint, given weights, or random)
and what its checkpoints hold is resume.py's; starting in an output folder first removes the
temporaries of a checkpoint write that was killed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dino_model.config import TrainConfig, dump_config
from dino_model.data.datasets import ImageFolderDataset
from dino_model.data.gpu_crops import GpuMultiCrop
from dino_model.data.loaders import batches
from dino_model.data.sources import build_train_data
from dino_model.data.transforms import MultiCropTransform
from dino_model.errors import ConfigError, DinoError, TrainingDivergedError
from dino_model.logs import JsonlWriter, progress
from dino_model.loss import DINOLoss
from dino_model.models.factory import build_student_teacher, has_batchnorm
from dino_model.models.fast_paths import apply_fast_paths
from dino_model.models.teacher import ema_update
from dino_model.runtime.checkpoint import (
    LATEST,
    METRICS,
    remove_stale_temporaries,
)
from dino_model.runtime.cpu_memory import keep_freed_memory
from dino_model.runtime.distributed import DistInfo, all_reduce_sum, init_distributed
from dino_model.train import monitor
from dino_model.train.optim import build_optimizer, cancel_last_layer_gradients, clip_gradients, param_groups
from dino_model.train.precision import compute_dtype, resolve_precision
from dino_model.train.resume import drop_metrics_from, init_lineage, save_checkpoint, starting_epoch
from dino_model.train.schedules import cosine_schedule, effective_lr
from dino_model.train.trainer import Schedules, Trainer, unwrap

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    output_dir: Path
    checkpoint: Path
    epochs_done: int
    final_metrics: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, str] = field(default_factory=dict)


def fit(cfg: TrainConfig, *, resume: bool = False) -> TrainResult:
    """Train DINO as configured; with `resume`, continue from output_dir/checkpoint.pth.

    Without a checkpoint to resume, the run starts at epoch 0 from `train.init_weights` when set.
    """
    dist = init_distributed(cfg.train.device)
    out = Path(cfg.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if dist.is_main:
        remove_stale_temporaries(out)
    _seed_epoch(cfg.train.seed, 0, rank=0)  # identical initial weights on every process
    images, dataset, loader, sampler = build_train_data(  # an image folder, or a folder/URL of tar shards
        cfg.data.root, MultiCropTransform(cfg.crops), seed=cfg.train.seed, batch_size=cfg.train.batch_size,
        rank=dist.rank, world_size=dist.world_size, num_workers=cfg.data.num_workers,
        pin_memory=dist.device.type == "cuda", open_folder=ImageFolderDataset, encoded=cfg.crops.backend == "gpu",
        extra_roots=cfg.data.extra_roots,
    )
    trainer = build_trainer(cfg, dist, steps_per_epoch=len(loader))
    start_epoch = starting_epoch(trainer, out, resume=resume)
    cfg = trainer.cfg  # a resumed run keeps the checkpoint's train.init_* record
    if dist.is_main:
        _write_output(lambda: dump_config(cfg, out / "config.yaml"), out / "config.yaml")
        drop_metrics_from(out / METRICS, start_epoch)
        logger.info("training %d images (%d unreadable file(s) skipped), %d steps/epoch, %d process(es), device %s, "
                    "precision %s; %s", len(images), images.n_skipped, len(loader), dist.world_size, dist.device,
                    cfg.train.precision, numbered_copies(cfg.train.saveckp_freq))
    metrics: dict[str, Any] = {}
    last_epoch = cfg.train.epochs if not cfg.train.stop_after_epochs else min(
        cfg.train.epochs, cfg.train.stop_after_epochs)
    writer = JsonlWriter(out / METRICS)
    for epoch in range(start_epoch, last_epoch):
        _seed_epoch(cfg.train.seed, epoch, dist.rank)
        dataset.set_epoch(epoch)
        sampler.set_epoch(epoch)
        try:
            metrics = train_one_epoch(trainer, loader, epoch, out / LATEST)
        except TrainingDivergedError:
            if dist.is_main:
                _push(cfg, {"epoch": epoch, "loss": float("nan")})
            raise
        metrics["skipped_at_scan"] = images.n_skipped
        if dist.is_main:
            _write_output(lambda m=metrics: writer.write(m), writer.path)
            save_checkpoint(trainer, out, epoch)
            _push(cfg, metrics)
            logger.info("epoch %d: %s", epoch, _fmt(metrics))
    return TrainResult(
        output_dir=out, checkpoint=out / LATEST, epochs_done=last_epoch, final_metrics=metrics,
        lineage={"data_version": cfg.data.version} | init_lineage(trainer.init),
    )


def build_trainer(cfg: TrainConfig, dist: DistInfo, *, steps_per_epoch: int) -> Trainer:
    cfg = _with_resolved_precision(cfg, dist)  # the trainer, its checkpoints and config.yaml hold the resolved value
    student, teacher = build_student_teacher(cfg.model)
    if cfg.train.channels_last:
        student, teacher = student.to(memory_format=torch.channels_last), teacher.to(
            memory_format=torch.channels_last)
    student, teacher = student.to(dist.device), teacher.to(dist.device)
    apply_fast_paths([student, teacher], dist.device, compute_dtype(cfg.train.precision))
    if dist.device.type == "cpu" and cfg.train.cpu_keep_freed_memory:
        keep_freed_memory()
    if dist.world_size > 1:
        if has_batchnorm(student) and dist.device.type == "cuda":
            student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
            teacher = nn.SyncBatchNorm.convert_sync_batchnorm(teacher)
            teacher = DistributedDataParallel(teacher, device_ids=[dist.local_rank])
        elif has_batchnorm(student):
            logger.warning("SyncBatchNorm needs CUDA: BatchNorm statistics stay per process on CPU")
        ids = [dist.local_rank] if dist.device.type == "cuda" else None
        student = DistributedDataParallel(student, device_ids=ids)  # broadcasts rank 0's weights
        unwrap(teacher).load_state_dict(student.module.state_dict())
    if cfg.train.compile:
        student = torch.compile(student)
    if cfg.train.precision == "fp16" and dist.device.type != "cuda":
        raise ConfigError("train.precision=fp16 needs CUDA; use train.precision=bf16 on CPU")
    optimizer = build_optimizer(param_groups(student), cfg.optim)
    n_crops = 2 + cfg.crops.local_crops_number
    loss = DINOLoss(
        cfg.model.out_dim, n_crops, epochs=cfg.train.epochs, teacher_temp=cfg.loss.teacher_temp,
        warmup_teacher_temp=cfg.loss.warmup_teacher_temp,
        warmup_teacher_temp_epochs=cfg.loss.warmup_teacher_temp_epochs,
        student_temp=cfg.loss.student_temp, center_momentum=cfg.loss.center_momentum,
    ).to(dist.device)
    return Trainer(
        cfg=cfg, dist=dist, student=student, teacher=teacher, loss=loss, optimizer=optimizer,
        scaler=torch.amp.GradScaler(dist.device.type, enabled=cfg.train.precision == "fp16"),
        schedules=build_schedules(cfg, steps_per_epoch, dist.world_size), steps_per_epoch=steps_per_epoch,
    )


def build_schedules(cfg: TrainConfig, steps_per_epoch: int, world_size: int) -> Schedules:
    o, epochs = cfg.optim, cfg.train.epochs
    peak = effective_lr(o.base_lr, cfg.train.batch_size * world_size)
    return Schedules(
        lr=cosine_schedule(peak, o.min_lr, epochs, steps_per_epoch, warmup_epochs=o.warmup_epochs),
        wd=cosine_schedule(o.weight_decay, o.weight_decay_end, epochs, steps_per_epoch),
        momentum=cosine_schedule(o.momentum_teacher, 1.0, epochs, steps_per_epoch),
    )


def train_one_epoch(t: Trainer, loader, epoch: int, ckpt_path: Path) -> dict[str, Any]:
    t.student.train()
    sums = torch.zeros(3, dtype=torch.float64, device=t.dist.device)  # loss, teacher entropy, files skipped
    start, steps, n_images = time.perf_counter(), 0, 0
    steps_iter = progress(batches(loader), desc=f"epoch {epoch}", total=t.steps_per_epoch, enabled=t.dist.is_main)
    device_crops = GpuMultiCrop(t.cfg.crops, t.dist.device) if t.cfg.crops.backend == "gpu" else None
    for i, (crops, _, skipped) in enumerate(steps_iter):
        if device_crops is not None:  # encoded images, decoded and cropped on this device
            crops, undecodable = device_crops(crops)
            skipped = skipped + undecodable
        it = epoch * t.steps_per_epoch + i
        loss = train_step(t, crops, epoch, it, ckpt_path)
        sums += torch.stack([loss.detach().double(), t.loss.last_teacher_entropy.double(),
                             skipped.sum().to(sums)])
        steps, n_images = steps + 1, n_images + crops[0].shape[0] * t.dist.world_size
        if t.dist.is_main and (i + 1) % t.cfg.train.log_every_steps == 0:
            logger.info("epoch %d step %d/%d loss %.4f lr %.2e", epoch, i + 1, t.steps_per_epoch,
                        loss.item(), t.schedules.lr[it])
    elapsed = time.perf_counter() - start
    totals = all_reduce_sum(sums)
    loss_mean, entropy = (totals[:2] / (steps * t.dist.world_size)).tolist()
    if totals[2] > 0 and t.dist.is_main:
        logger.warning("epoch %d: %d image file(s) could not be read and were skipped", epoch, int(totals[2]))
    it = epoch * t.steps_per_epoch + max(steps - 1, 0)
    return {
        "epoch": epoch,
        "loss": loss_mean,
        "lr": float(t.schedules.lr[it]),
        "wd": float(t.schedules.wd[it]),
        "momentum": float(t.schedules.momentum[it]),
        "teacher_temp": t.loss.teacher_temp(epoch),
        "teacher_entropy": entropy,
        "kl": loss_mean - entropy,
        "collapsed": monitor.is_collapsed(entropy, t.cfg.model.out_dim, t.cfg.monitor),
        "images_per_s": n_images / elapsed if elapsed > 0 else 0.0,
        "steps": steps,
        "skipped_in_epoch": int(totals[2]),
    }


def train_step(t: Trainer, crops: list[torch.Tensor], epoch: int, it: int, ckpt_path: Path) -> torch.Tensor:
    for j, group in enumerate(t.optimizer.param_groups):
        group["lr"] = float(t.schedules.lr[it])
        if j == 0:
            group["weight_decay"] = float(t.schedules.wd[it])
    crops = [c.to(t.dist.device, non_blocking=True) for c in crops]
    with _autocast(t.cfg.train.precision, t.dist.device):
        with torch.no_grad():
            teacher_out = t.teacher(crops[:2])
        student_out = t.student(crops)
        loss = t.loss(student_out, teacher_out, epoch)
    monitor.check_finite(loss, epoch=epoch, step=it, checkpoint=str(ckpt_path))
    t.optimizer.zero_grad(set_to_none=True)
    t.scaler.scale(loss).backward()
    if t.cfg.optim.clip_grad > 0:
        t.scaler.unscale_(t.optimizer)
        clip_gradients(t.student_module, t.cfg.optim.clip_grad)
    cancel_last_layer_gradients(t.student_module, epoch, t.cfg.optim.freeze_last_layer_epochs)
    t.scaler.step(t.optimizer)
    t.scaler.update()
    ema_update(t.student_module, t.teacher_module, float(t.schedules.momentum[it]))
    return loss


def _push(cfg: TrainConfig, metrics: dict[str, Any]) -> None:
    """Epoch metrics to the Pushgateway named by $DINO_PUSHGATEWAY (never raises).

    The `run` label is $DINO_RUN_ID (a pipeline step sets the KFP run id), else the output folder's name.
    """
    from dino_model.monitoring.metrics import push_training_metrics, run_label

    labels = {"run": run_label(Path(cfg.train.output_dir).name)}
    push_training_metrics(metrics, labels=labels, out_dim=cfg.model.out_dim)


def _with_resolved_precision(cfg: TrainConfig, dist: DistInfo) -> TrainConfig:
    """cfg with train.precision=auto replaced by what this device trains in (dino_model.train.precision).

    Recorded so, a resume on the same kind of device resolves to the checkpoint's value again. fit()
    logs the value with the device once the run is set up (after a resume's config check).
    """
    precision = resolve_precision(cfg.train.precision, dist.device)
    if dist.is_main and precision != cfg.train.precision:
        logger.debug("train.precision=%s resolved to %s on %s", cfg.train.precision, precision, dist.device)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision=precision))


def _autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=compute_dtype(precision))


def _seed_epoch(seed: int, epoch: int, rank: int) -> None:
    s = seed + 1000 * epoch + rank
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def numbered_copies(saveckp_freq: int) -> str:
    """What train.saveckp_freq does, for the start-of-training log: 0 (no numbered copies) is said, not silent."""
    if saveckp_freq == 0:
        return f"{LATEST} only, no numbered copies (train.saveckp_freq=0)"
    return f"{LATEST} every epoch and checkpointNNNN.pth every {saveckp_freq} epoch(s) (train.saveckp_freq)"


def _write_output(write: Callable[[], Any], path: Path) -> None:
    """Run a write into the output folder; a full disk or a read-only folder becomes one clear error."""
    try:
        write()
    except OSError as exc:
        raise DinoError(f"cannot write {path}: {exc.strerror or exc}; free space under {path.parent} "
                        f"or choose another train.output_dir") from exc


def _fmt(metrics: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
