"""How a pipeline run ended, for the alerts and for the people reading the run in the KFP UI.

The training pipeline's exit handler runs after every other task, whether they succeeded, failed or
were cancelled, and receives KFP's final status of the run. It pushes one group per pipeline (not per
run, so a later success clears an earlier failure) with `dino_pipeline_run_succeeded` (1 or 0), the
time the run ended and an info series naming the run; rules.yml's DinoPipelineRunFailed reads the
first. It also writes a short Markdown page that the UI shows as the run's summary.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Gauge

from dino_model.monitoring.metrics import push_registry

RUN_SUCCEEDED = ("dino_pipeline_run_succeeded", "1 when the pipeline's latest run succeeded, 0 when it failed or "
                 "was cancelled.")
RUN_FINISHED = ("dino_pipeline_run_finished_timestamp_seconds", "Unix time when the pipeline's latest run ended.")
RUN_INFO = ("dino_pipeline_run_info", "Always 1; labels name the pipeline's latest run and its final state.")
SUCCEEDED = "SUCCEEDED"


def _gauge(registry: CollectorRegistry, spec: tuple[str, str], value: float, labels: Mapping[str, str]) -> None:
    Gauge(*spec, list(labels), registry=registry).labels(**labels).set(value)


def run_status_registry(pipeline: str, run: str, state: str, *, finished_at: float) -> CollectorRegistry:
    registry = CollectorRegistry()
    _gauge(registry, RUN_SUCCEEDED, 1.0 if state == SUCCEEDED else 0.0, {"pipeline": pipeline})
    _gauge(registry, RUN_FINISHED, finished_at, {"pipeline": pipeline})
    _gauge(registry, RUN_INFO, 1.0, {"pipeline": pipeline, "run": run, "state": state})
    return registry


def record_run_status(pipeline: str, run: str, state: str, *, gateway: str | None = None,
                      finished_at: float | None = None, job: str = "dino-pipeline") -> bool:
    """Push the final state of `run` of `pipeline`; True when the gateway accepted it."""
    registry = run_status_registry(pipeline, run, state, finished_at=time.time() if finished_at is None
                                   else finished_at)
    return push_registry(registry, gateway=gateway, job=job, labels={"pipeline": pipeline})


def status_markdown(pipeline: str, run: str, state: str, *, error: str = "",
                    details: Mapping[str, str] | None = None) -> str:
    """The run's summary page: its final state, the error KFP reported, and any `details` (name -> value)."""
    lines = [f"# {pipeline}: {state.lower()}", "", f"- run: `{run}`", f"- final state: **{state}**"]
    if error:
        lines.append(f"- error: {error}")
    lines += [f"- {name}: {value}" for name, value in (details or {}).items()]
    return "\n".join(lines) + "\n"
