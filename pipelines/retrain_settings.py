"""What a retraining check submits, as one typed object read from the environment.

An install's retraining run differs from another's only by the ConfigMap `retrain-settings` its
overlay renders (k8s/base/kustomization.yaml, k8s/overlays/*): the pipeline parameters, the KFP
namespace, the registered pipeline version, the image a pipeline compiled in the pod runs, and the
retry policy. Reading all of it here, once, with an error naming each bad entry, keeps a misspelt
parameter from becoming a run that silently trains the pipeline's defaults (8 GPUs, the paper's
config) on a cluster that has none of them.

Entries (all optional):
- DINO_PARAM_<name>=<value>: a pipeline parameter (pipelines/training.py); values parse as JSON when
  they can (numbers, booleans, lists), else stay strings. `data_version` is the check's own.
- KFP_NAMESPACE: the KFP (profile) namespace of experiments and runs; empty for standalone KFP.
- DINO_PIPELINE: NAME@VERSION of a registered pipeline version to run; empty compiles one in the pod.
- DINO_IMAGE: the image every step of a pipeline compiled in the pod runs (components/_image.py).
- DINO_KFP_EXPERIMENT: the experiment of the runs (default dino-mlops).
- DINO_RETRAIN_MAX_ATTEMPTS (3), DINO_RETRAIN_BACKOFF_S (1800): see `RetryPolicy`.
- DINO_FLYWHEEL_OVERRIDES, DINO_FLYWHEEL_TOLERANCE: what a run for a data version the flywheel's
  snapshot made adds (`FlywheelRun`): it continues from the served weights on a short schedule.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dino_model.errors import ConfigError

PARAM_PREFIX = "DINO_PARAM_"
CHECK_OWNED = ("data_version",)  # set by the check for each data version, never by settings


@dataclass(frozen=True)
class RetryPolicy:
    """A run that FAILED is submitted again, at most `max_attempts` runs per data version in all.

    Attempt n + 1 is not submitted before attempt n's submission time + `backoff_s` * 2**(n - 1):
    the waits double, so a broken cluster is not flooded with runs that fail the same way.
    """

    max_attempts: int = 3
    backoff_s: float = 1800.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError(f"DINO_RETRAIN_MAX_ATTEMPTS must be at least 1, not {self.max_attempts}")
        if self.backoff_s < 0:
            raise ConfigError(f"DINO_RETRAIN_BACKOFF_S must not be negative, not {self.backoff_s}")

    def due_at(self, submitted_at: float, attempts: int) -> float:
        """When the run after `attempts` runs (the last submitted at `submitted_at`) may be submitted."""
        return submitted_at + self.backoff_s * 2 ** max(attempts - 1, 0)


# A continued schedule, not a new one: the served backbone already learnt the data set, so a tenth of
# the paper's 100 epochs adapts it to the captured images; one warm-up epoch settles the fresh
# optimiser and heads (train.init_parts=auto starts the heads afresh from a backbone-only file); and
# the teacher, already trained, needs no temperature warm-up (the paper config's 30 epochs would also
# exceed 10, which the config refuses). A third of the learning rate of paper_vit_small (the CronJob's
# config, 0.0005): continuing a trained model on the training images plus captured ones, the full rate
# pulled both the fixed and the shifted k-NN down where a third raised both (docs/monitoring.md, the
# flywheel's measurements); a run of another config sets its own rate here.
DEFAULT_FLYWHEEL_OVERRIDES = ("train.epochs=10 optim.warmup_epochs=1 optim.base_lr=0.00017 "
                              "loss.warmup_teacher_temp_epochs=0")
# k-NN top-1 points a flywheel model may lose against the serving one and still deploy: it trades a
# point on the fixed validation set for matching what production sends now (the drift that triggered
# it); a run-to-run spread of that size between equal models is common, so 0 would hold most of them.
DEFAULT_FLYWHEEL_TOLERANCE = 1.0


@dataclass(frozen=True)
class FlywheelRun:
    """What a run for a data version the flywheel's snapshot made adds to every run's parameters."""

    overrides: tuple[str, ...] = tuple(shlex.split(DEFAULT_FLYWHEEL_OVERRIDES))
    tolerance: float = DEFAULT_FLYWHEEL_TOLERANCE

    def __post_init__(self) -> None:
        bad = [o for o in self.overrides if "=" not in o]
        if bad:
            raise ConfigError(f"DINO_FLYWHEEL_OVERRIDES holds {', '.join(bad)}, not key=value overrides")
        if not math.isfinite(self.tolerance) or self.tolerance < 0:
            raise ConfigError(f"DINO_FLYWHEEL_TOLERANCE must be a number of points >= 0, not {self.tolerance}")

    def params(self, base: Mapping[str, Any]) -> dict[str, Any]:
        """`base` with the served weights to start from, the continued schedule after its own overrides
        (later ones win) and the gate's tolerance."""
        return {**base, "init_from_serving": True, "overrides": [*base.get("overrides", []), *self.overrides],
                "gate_tolerance": self.tolerance}


@dataclass(frozen=True)
class RetrainSettings:
    """Everything a retraining run is made of, besides the data version."""

    params: dict[str, Any] = field(default_factory=dict)
    namespace: str | None = None
    registered: str | None = None
    image: str | None = None
    experiment: str = "dino-mlops"
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    flywheel: FlywheelRun = field(default_factory=FlywheelRun)

    def __post_init__(self) -> None:
        if self.registered and "@" not in self.registered:
            raise ConfigError(f"DINO_PIPELINE {self.registered!r} must be NAME@VERSION, e.g. dino-training@0.1.0")
        check_params(self.params)


def pipeline_parameters() -> list[str]:
    """The training pipeline's parameter names, from its signature."""
    from pipelines.training import dino_training_pipeline

    return list(inspect.signature(dino_training_pipeline.pipeline_func).parameters)


def check_params(params: Mapping[str, Any]) -> None:
    """Refuse parameters the pipeline does not have, and those the check sets itself."""
    if not params:
        return
    known = pipeline_parameters()
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ConfigError(f"{', '.join(unknown)}: not a parameter of the training pipeline "
                          f"(it has {', '.join(known)})")
    owned = sorted(set(params) & set(CHECK_OWNED))
    if owned:
        raise ConfigError(f"{', '.join(owned)} is set by the retraining check for each data version; "
                          f"remove {', '.join(PARAM_PREFIX + k for k in owned)}")


def parse_value(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def params_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """The DINO_PARAM_<name> entries as {name: value}."""
    params = {key[len(PARAM_PREFIX):]: parse_value(value) for key, value in environ.items()
              if key.startswith(PARAM_PREFIX)}
    if "" in params:
        raise ConfigError(f"an entry named {PARAM_PREFIX} has no parameter name after the prefix")
    return params


def _number(environ: Mapping[str, str], key: str, default: float, kind: type) -> Any:
    raw = environ.get(key, "").strip()
    if not raw:
        return kind(default)
    try:
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{key}={raw!r} is not {'an integer' if kind is int else 'a number'}") from None


def settings_from_env(environ: Mapping[str, str] | None = None) -> RetrainSettings:
    """The settings the CronJob's environment (or this shell's) holds."""
    env = os.environ if environ is None else environ
    retry = RetryPolicy(max_attempts=_number(env, "DINO_RETRAIN_MAX_ATTEMPTS", 3, int),
                        backoff_s=_number(env, "DINO_RETRAIN_BACKOFF_S", 1800.0, float))
    return RetrainSettings(params=params_from_env(env), namespace=env.get("KFP_NAMESPACE", "").strip() or None,
                           registered=env.get("DINO_PIPELINE", "").strip() or None,
                           image=env.get("DINO_IMAGE", "").strip() or None,
                           experiment=env.get("DINO_KFP_EXPERIMENT", "").strip() or "dino-mlops", retry=retry,
                           flywheel=flywheel_run_from_env(env))


def flywheel_run_from_env(env: Mapping[str, str]) -> FlywheelRun:
    """DINO_FLYWHEEL_OVERRIDES (space-separated, shell quoting) and DINO_FLYWHEEL_TOLERANCE; unset: the defaults."""
    overrides = env.get("DINO_FLYWHEEL_OVERRIDES")
    return FlywheelRun(overrides=tuple(shlex.split(DEFAULT_FLYWHEEL_OVERRIDES if overrides is None else overrides)),
                       tolerance=_number(env, "DINO_FLYWHEEL_TOLERANCE", DEFAULT_FLYWHEEL_TOLERANCE, float))
