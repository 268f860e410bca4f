"""Compiling the pipeline to IR YAML and submitting runs or recurring runs to a KFP host.

Recurring runs use KFP's six-field cron (seconds first) and never catch up on missed runs. The KFP
client has no request timeout (its constructor already calls the host), so a submission runs in a
child process that is killed at a deadline: a host that accepts and never answers cannot hang a
retraining check that holds its lock.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dino_model.errors import ConfigError, PipelineError

logger = logging.getLogger(__name__)


def compile_pipeline(output: str | Path) -> Path:
    from kfp import compiler

    from pipelines.training import dino_training_pipeline

    compiler.Compiler().compile(dino_training_pipeline, str(output))
    return Path(output)


def parse_params(items: Sequence[str]) -> dict[str, Any]:
    """KEY=VALUE strings; values parse as JSON when they can (numbers, booleans, lists)."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"pipeline parameter {item!r} is not KEY=VALUE")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def check_cron(schedule: str) -> str:
    fields = schedule.split()
    if len(fields) != 6:
        raise ConfigError(f"schedule {schedule!r} has {len(fields)} fields; KFP wants six with seconds first, "
                          "e.g. '0 0 2 * * *' for 02:00 every day")
    return schedule


def submit(host: str, *, params: dict[str, Any], experiment: str = "dino-mlops", run_name: str | None = None,
           schedule: str | None = None, package: str | Path | None = None, client=None,
           timeout_s: float = 120.0) -> dict[str, Any]:
    """Create a run (or a recurring run when `schedule` is given); returns its ids.

    Without an injected `client` the call runs in a child process that is killed after `timeout_s`.
    """
    if schedule:
        check_cron(schedule)
    kwargs = {"params": params, "experiment": experiment, "run_name": run_name, "schedule": schedule,
              "package": str(package) if package else None}
    if client is not None:
        return _submit(host, client=client, **kwargs)
    return _bounded(host, kwargs, timeout_s)


def _bounded(host: str, kwargs: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_submit_in_child, args=(send, host, kwargs), daemon=True)
    child.start()
    send.close()
    try:
        if not receive.poll(timeout_s):
            raise PipelineError(f"the KFP API at {host} did not answer within {timeout_s:.0f} s")
        ok, value = receive.recv()
    except EOFError:
        raise PipelineError(f"submitting to the KFP API at {host} died (exit code {child.exitcode})") from None
    finally:
        if child.is_alive():
            child.kill()
        child.join()
        receive.close()
    if not ok:
        raise PipelineError(value)
    return value


def _submit_in_child(send, host: str, kwargs: dict[str, Any]) -> None:
    try:
        result = (True, _submit(host, **kwargs))
    except Exception as exc:  # noqa: BLE001 - every failure travels back as one message
        result = (False, str(exc) if isinstance(exc, PipelineError) else f"{type(exc).__name__}: {exc}")
    send.send(result)
    send.close()


def _submit(host: str, *, params: dict[str, Any], experiment: str, run_name: str | None, schedule: str | None,
            package: str | None, client=None) -> dict[str, Any]:
    import tempfile

    import kfp

    try:
        client = client or kfp.Client(host=host)
        with tempfile.TemporaryDirectory() as tmp:
            package = package or str(compile_pipeline(Path(tmp) / "pipeline.yaml"))
            if schedule:
                exp = client.create_experiment(name=experiment)
                job = client.create_recurring_run(
                    experiment_id=exp.experiment_id, job_name=run_name or "dino-training-schedule",
                    cron_expression=schedule, params=params, pipeline_package_path=package,
                    max_concurrency=1, no_catchup=True, enabled=True,
                )
                return {"recurring_run_id": job.recurring_run_id, "experiment_id": exp.experiment_id,
                        "schedule": schedule, "host": host}
            run = client.create_run_from_pipeline_package(
                package, arguments=params, run_name=run_name, experiment_name=experiment)
            return {"run_id": run.run_id, "experiment": experiment, "host": host}
    except (OSError, ConnectionError) as exc:
        raise PipelineError(f"cannot reach the KFP API at {host}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - kfp raises urllib3/ApiException types from several layers
        if type(exc).__module__.startswith(("urllib3", "kfp_server_api", "requests")):
            raise PipelineError(f"the KFP API at {host} failed: {type(exc).__name__}: {exc}") from exc
        raise
