"""Where a run starts: a checkpoint it resumes exactly, given initial weights, or a random initialisation.

`--resume` continues a run exactly: weights, optimiser, loss centre and the epoch, and refuses settings
that differ from the checkpoint's unless train.allow_config_change is set (model settings never).
`train.init_weights` starts a new run (epoch 0, fresh optimiser, loss centre and schedules) from given
weights instead of a random initialisation. When both are given and the output folder has a checkpoint,
the resume wins: the weights already moved on from their initialisation, and the checkpoint keeps the
record of where they started (its `init` entry, carried into every later checkpoint and the lineage).

Metrics records of epochs the checkpoint does not hold are dropped (a run killed between writing an
epoch's record and its checkpoint replays that epoch), so each epoch appears once in metrics.jsonl.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from dino_model.config import RunConfig, TrainConfig, describe_changes, resume_changes
from dino_model.errors import CheckpointError, ConfigError
from dino_model.models.loading import init_student_teacher
from dino_model.runtime.checkpoint import LATEST, load_checkpoint, save_atomic, write_text_atomic
from dino_model.train.trainer import Trainer

logger = logging.getLogger(__name__)


def save_checkpoint(t: Trainer, out: Path, epoch: int) -> None:
    state = {
        "student": t.student_module.state_dict(),
        "teacher": t.teacher_module.state_dict(),
        "optimizer": t.optimizer.state_dict(),
        "scaler": t.scaler.state_dict(),
        "dino_loss": t.loss.state_dict(),
        "epoch": epoch + 1,
        "iteration": (epoch + 1) * t.steps_per_epoch,
        "config": t.cfg.to_dict(),
        "data_version": t.cfg.data.version,
        "init": dict(t.init),
    }
    save_atomic(state, out / LATEST)
    if t.cfg.train.saveckp_freq and epoch % t.cfg.train.saveckp_freq == 0:
        save_atomic(state, out / f"checkpoint{epoch:04d}.pth")


def starting_epoch(t: Trainer, out: Path, *, resume: bool) -> int:
    """The epoch the run in `out` starts at: a resumed checkpoint's, else 0 (from train.init_weights when set)."""
    epoch = _resume(t, out) if resume else None
    if epoch is not None:
        return epoch
    if t.cfg.train.init_weights:
        _initialise(t)
    return 0


def _initialise(t: Trainer) -> None:
    """Load train.init_weights into the student and teacher of a run that starts at epoch 0."""
    path = t.cfg.train.init_weights
    t.init = init_student_teacher(path, t.student_module, t.teacher_module, t.cfg.model,
                                  parts=t.cfg.train.init_parts)
    if t.dist.is_main:
        logger.info("initialised %s from %s (%s file%s, sha256 %s...); a new run from epoch 0",
                    "student and teacher" if t.init["parts"] == "all" else "both backbones (fresh heads)",
                    path, t.init["format"],
                    f", epoch {t.init['source_epoch']}" if "source_epoch" in t.init else "", t.init["sha256"][:12])


def init_lineage(init: dict[str, Any]) -> dict[str, str]:
    return {"init_weights": str(init["path"]), "init_sha256": str(init["sha256"])} if init else {}


def _resume(t: Trainer, out: Path) -> int | None:
    """Restore the run in `out`; the epoch to continue from, or None when there is no checkpoint."""
    path = out / LATEST
    if not path.is_file():
        logger.info("no checkpoint at %s: starting a new run", path)
        return None
    state = load_checkpoint(path, map_location=t.dist.device)
    missing = {"config", "epoch", "student", "teacher", "optimizer", "scaler", "dino_loss"} - set(state)
    if missing:
        raise CheckpointError(f"{path} is not a training checkpoint of this project (it lacks {sorted(missing)})")
    _check_resume_config(path, state["config"], t.cfg)
    t.student_module.load_state_dict(state["student"])
    t.teacher_module.load_state_dict(state["teacher"])
    t.optimizer.load_state_dict(state["optimizer"])
    t.scaler.load_state_dict(state["scaler"])
    t.loss.load_state_dict(state["dino_loss"])
    _keep_init_record(t, state)
    logger.info("resumed from %s at epoch %d", path, state["epoch"])
    return int(state["epoch"])


def _keep_init_record(t: Trainer, state: dict[str, Any]) -> None:
    """A resumed run's weights come from the checkpoint: train.init_* as given now are ignored, and the
    checkpoint's record of the initial weights is carried on (older checkpoints have none)."""
    saved = state["config"].get("train", {})
    kept = {key: saved.get(key, getattr(RunConfig(), key)) for key in ("init_weights", "init_parts")}
    if t.cfg.train.init_weights and t.cfg.train.init_weights != kept["init_weights"] and t.dist.is_main:
        logger.warning("train.init_weights=%s is ignored: the run resumes from its checkpoint (which started from %s)",
                       t.cfg.train.init_weights, kept["init_weights"] or "a random initialisation")
    t.cfg = dataclasses.replace(t.cfg, train=dataclasses.replace(t.cfg.train, **kept))
    t.init = dict(state.get("init") or {})


def _check_resume_config(path: Path, saved: dict[str, Any], cfg: TrainConfig) -> None:
    """Refuse to continue a checkpoint with other optimisation settings, unless told to; model changes never."""
    changes = resume_changes(saved, cfg)
    model = {k: v for k, v in changes.items() if k.startswith("model.")}
    if model:
        raise CheckpointError(f"{path} was trained with another model: {describe_changes(model)}; "
                              f"resume with the checkpoint's model settings or use a new train.output_dir")
    if not changes:
        return
    if not cfg.train.allow_config_change:
        raise ConfigError(
            f"{path} was trained with other settings: {describe_changes(changes)}; resume with the "
            f"checkpoint's values, or pass --allow-config-change (train.allow_config_change=true) to continue "
            f"with the new ones")
    logger.warning("resuming %s with changed settings (train.allow_config_change): %s", path,
                   describe_changes(changes))


def drop_metrics_from(path: Path, epoch: int) -> int:
    """Remove records of epochs >= `epoch` (and torn lines) from a metrics file, atomically; how many went."""
    if not path.is_file():
        return 0
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if _record_epoch(line) is not None and _record_epoch(line) < epoch]
    if len(kept) < len(lines):
        write_text_atomic("".join(f"{line}\n" for line in kept), path)
        logger.info("dropped %d record(s) of epoch %d onwards from %s: those epochs run again",
                    len(lines) - len(kept), epoch, path)
    return len(lines) - len(kept)


def _record_epoch(line: str) -> int | None:
    """The epoch of one metrics line; None for a line torn by a killed write."""
    try:
        return int(json.loads(line)["epoch"])
    except (ValueError, KeyError, TypeError):
        return None
