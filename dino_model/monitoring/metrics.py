"""The platform's own Prometheus metrics, pushed by batch jobs to a Pushgateway.

Training, evaluation, deployment and data registration are batch jobs that may end before
Prometheus scrapes them, so each one pushes its latest values to a Pushgateway, which Prometheus
scrapes with `honor_labels: true` (Prometheus' "When to use the Pushgateway" guidance). Every push
builds a fresh `CollectorRegistry` and replaces its group (HTTP PUT), so the gateway always holds
the last value of each job and nothing leaks into prometheus-client's global registry.

A monitoring outage must never fail training: an empty gateway address logs one line and does
nothing, an unreachable gateway logs a warning, and each `push_*`/`record_*` function returns whether
the push reached the gateway instead of raising. The names below are what rules.yml and
dashboard.json query; docs/monitoring.md lists them.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

logger = logging.getLogger(__name__)

GATEWAY_ENV = "DINO_PUSHGATEWAY"
RUN_ENV = "DINO_RUN_ID"
PUSH_TIMEOUT_S = 5.0

# key in the training loop's per-epoch metrics dict -> (metric name, help)
TRAIN_METRICS: dict[str, tuple[str, str]] = {
    "epoch": ("dino_train_epoch", "Last finished training epoch (0-based)."),
    "loss": ("dino_train_loss", "Mean DINO loss over the last epoch."),
    "lr": ("dino_train_learning_rate", "Learning rate at the end of the last epoch."),
    "momentum": ("dino_train_teacher_momentum", "Teacher EMA momentum at the end of the last epoch."),
    "teacher_temp": ("dino_train_teacher_temperature", "Teacher softmax temperature of the last epoch."),
    "teacher_entropy": ("dino_train_teacher_entropy", "Mean entropy of the teacher output in nats."),
    "kl": ("dino_train_teacher_student_kl", "Mean teacher-to-student KL divergence in nats."),
    "images_per_s": ("dino_train_images_per_second", "Training throughput over the last epoch, all processes."),
    "collapsed": ("dino_train_collapsed", "1 when the teacher entropy left the collapse bounds, else 0."),
}
LOSS_FINITE = ("dino_train_loss_finite", "1 while the training loss is finite, 0 after a NaN or infinity.")
ENTROPY_MAX = ("dino_train_teacher_entropy_max", "Largest possible teacher entropy, log(out_dim), in nats.")

EVAL_METRIC = ("dino_eval_metric", "Latest score of an evaluation (k-NN, linear probe, DAVIS, ...).")
EVAL_TIMESTAMP = ("dino_eval_timestamp_seconds", "Unix time of the latest evaluation push.")
DEPLOYED_VERSION = ("dino_deployed_model_version", "Triton model version that was last deployed successfully.")
DEPLOYMENT_TIMESTAMP = ("dino_deployment_timestamp_seconds", "Unix time of the last successful deployment.")
MODEL_INFO = ("dino_model_info", "Always 1; labels name the deployed model, its version and its data version.")
DATA_INFO = ("dino_data_version_info", "Always 1; the md5 label names the newest registered data version.")
DATA_TIMESTAMP = ("dino_data_version_timestamp_seconds", "Unix time when the newest data version was registered.")
RETRAIN_ATTEMPTS = ("dino_retrain_attempts",
                    "Training runs the retraining check submitted for the newest data version.")
RETRAIN_GAVE_UP = ("dino_retrain_gave_up",
                   "1 when every allowed retraining run for the newest data version failed and the check stopped.")


def run_label(default: str) -> str:
    """The `run` grouping label: $DINO_RUN_ID (a pipeline step sets it to the KFP run id), else `default`."""
    return os.environ.get(RUN_ENV, "").strip() or default


def resolve_gateway(gateway: str | None) -> str:
    """The Pushgateway address: the argument, else $DINO_PUSHGATEWAY, else '' (pushing disabled)."""
    return (os.environ.get(GATEWAY_ENV, "") if gateway is None else gateway).strip()


def _gauge(registry: CollectorRegistry, spec: tuple[str, str], value: float,
           labels: Mapping[str, str] | None = None) -> None:
    name, doc = spec
    gauge = Gauge(name, doc, list(labels or {}), registry=registry)
    (gauge.labels(**labels) if labels else gauge).set(float(value))


def training_registry(metrics: Mapping[str, Any], *, out_dim: int | None = None) -> CollectorRegistry:
    """The gauges for one epoch's metrics dict (keys as in `train_one_epoch`'s result).

    Unknown keys are ignored; `dino_train_loss_finite` is derived from `loss`, and
    `dino_train_teacher_entropy_max` = log(out_dim) when `out_dim` is given (the collapse rule
    compares the entropy with it).
    """
    registry = CollectorRegistry()
    for key, spec in TRAIN_METRICS.items():
        if key in metrics and metrics[key] is not None:
            _gauge(registry, spec, float(metrics[key]))
    if "loss" in metrics:
        _gauge(registry, LOSS_FINITE, 1.0 if math.isfinite(float(metrics["loss"])) else 0.0)
    if out_dim is not None:
        if out_dim < 2:
            raise ValueError(f"out_dim={out_dim}: the DINO head needs at least 2 prototypes")
        _gauge(registry, ENTROPY_MAX, math.log(out_dim))
    return registry


def push_training_metrics(metrics: Mapping[str, Any], *, gateway: str | None = None, job: str = "dino-train",
                          labels: Mapping[str, str] | None = None, out_dim: int | None = None) -> bool:
    """Push one epoch's training metrics; True when the gateway accepted them.

    Args:
        metrics: the loop's per-epoch dict (epoch, loss, lr, teacher_entropy, kl, images_per_s, ...).
        gateway: host:port of the Pushgateway; None reads $DINO_PUSHGATEWAY; '' disables pushing.
        job: the Pushgateway job (becomes the `job` label).
        labels: extra grouping labels, e.g. {"run": run_id}, so concurrent runs keep separate groups.
        out_dim: the DINO head's output dimension, for `dino_train_teacher_entropy_max`.
    """
    return push_registry(training_registry(metrics, out_dim=out_dim), gateway=gateway, job=job, labels=labels)


def eval_registry(evaluation: str, metrics: Mapping[str, float], *, timestamp: float | None = None
                  ) -> CollectorRegistry:
    """`dino_eval_metric{evaluation, metric}` per score plus the push time."""
    registry = CollectorRegistry()
    gauge = Gauge(EVAL_METRIC[0], EVAL_METRIC[1], ["evaluation", "metric"], registry=registry)
    for name, value in metrics.items():
        gauge.labels(evaluation=evaluation, metric=name).set(float(value))
    _gauge(registry, EVAL_TIMESTAMP, time.time() if timestamp is None else timestamp, {"evaluation": evaluation})
    return registry


def push_eval_metrics(evaluation: str, metrics: Mapping[str, float], *, gateway: str | None = None,
                      job: str = "dino-eval", labels: Mapping[str, str] | None = None) -> bool:
    """Push an evaluation's flat `metrics` map (the report envelope's "metrics"); True on success.

    The evaluation name joins the grouping key, so k-NN and linear-probe pushes do not replace
    each other.
    """
    grouping = {"evaluation": evaluation, **(labels or {})}
    return push_registry(eval_registry(evaluation, metrics), gateway=gateway, job=job, labels=grouping)


def deployment_registry(model: str, version: int | str, *, data_version: str = "",
                        timestamp: float | None = None) -> CollectorRegistry:
    if not str(version).isdigit():
        raise ValueError(f"model version {version!r} of {model!r} is not a Triton version (a positive integer)")
    registry = CollectorRegistry()
    _gauge(registry, DEPLOYED_VERSION, int(version), {"model": model})
    _gauge(registry, DEPLOYMENT_TIMESTAMP, time.time() if timestamp is None else timestamp, {"model": model})
    _gauge(registry, MODEL_INFO, 1, {"model": model, "version": str(version), "data_version": data_version})
    return registry


def record_deployment(model: str, version: int | str, *, data_version: str = "", gateway: str | None = None,
                      timestamp: float | None = None, job: str = "dino-deploy") -> bool:
    """Record a *successful* deployment (call it after the smoke test passed); True on success.

    Sets `dino_deployment_timestamp_seconds`, which the DinoNoDeploymentAfterNewData alert compares
    with `dino_data_version_timestamp_seconds`.
    """
    registry = deployment_registry(model, version, data_version=data_version, timestamp=timestamp)
    return push_registry(registry, gateway=gateway, job=job, labels={"model": model})


def data_version_registry(md5: str, *, registered_at: float) -> CollectorRegistry:
    registry = CollectorRegistry()
    _gauge(registry, DATA_INFO, 1, {"md5": md5})
    _gauge(registry, DATA_TIMESTAMP, registered_at)
    return registry


def record_data_version(md5: str, *, gateway: str | None = None, registered_at: float | None = None,
                        job: str = "dino-data") -> bool:
    """Record the newest data version (DVC md5); True on success.

    Calling it again with the md5 the gateway already holds keeps the first registration time,
    so a scheduled check that re-reports an unchanged version does not restart the
    "no deployment after new data" clock.
    """
    address = resolve_gateway(gateway)
    if address and registered_at is None:
        from dino_model.monitoring.pushgateway import current_data_version

        known = current_data_version(address, job=job)
        if known is not None and known[0] == md5:
            logger.info("data version %s already registered at %.0f; keeping that time", md5, known[1])
            registered_at = known[1]
    when = time.time() if registered_at is None else registered_at
    return push_registry(data_version_registry(md5, registered_at=when), gateway=gateway, job=job)


def retraining_registry(md5: str, *, attempts: int, gave_up: bool) -> CollectorRegistry:
    registry = CollectorRegistry()
    _gauge(registry, RETRAIN_ATTEMPTS, attempts, {"data_version": md5})
    _gauge(registry, RETRAIN_GAVE_UP, 1 if gave_up else 0, {"data_version": md5})
    return registry


def record_retraining(md5: str, *, attempts: int, gave_up: bool, gateway: str | None = None,
                      job: str = "dino-retrain") -> bool:
    """Record the retraining check's runs for the newest data version; True on success.

    Each push replaces the group, so a new data version clears the `gave_up` of the previous one and
    the DinoRetrainingGaveUp alert with it.
    """
    return push_registry(retraining_registry(md5, attempts=attempts, gave_up=gave_up), gateway=gateway, job=job)


def push_registry(registry: CollectorRegistry, *, gateway: str | None, job: str,
                  labels: Mapping[str, str] | None = None) -> bool:
    """PUT the registry as the group (job, labels); log instead of raising when it fails."""
    from prometheus_client import push_to_gateway

    address = resolve_gateway(gateway)
    if not address:
        logger.info("no Pushgateway configured (pass gateway= or set %s); %s metrics not pushed", GATEWAY_ENV, job)
        return False
    try:
        push_to_gateway(address, job=job, registry=registry, grouping_key=dict(labels or {}), timeout=PUSH_TIMEOUT_S)
    except OSError as exc:  # URLError, connection refused, timeouts, HTTP errors from the gateway
        logger.warning("could not push %s metrics to the Pushgateway at %s (%s); continuing without them",
                       job, address, exc)
        return False
    logger.debug("pushed %s metrics to %s", job, address)
    return True


def push_step_metrics(kind: str, metrics: Mapping[str, Any], *, gateway: str | None, run: str) -> bool:
    """Push a finished step's Metrics (its artifact's name -> value) labelled with the KFP `run`.

    `kind` "train" pushes training metrics (job dino-train), any other kind the evaluation of that name
    (job dino-eval). The steps that computed them may be cached and reused by later runs, so the run
    label is set here, by a step that never caches.
    """
    values = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if kind == "train":
        return push_training_metrics(values, gateway=gateway, labels={"run": run})
    return push_eval_metrics(kind, values, gateway=gateway, labels={"run": run})
