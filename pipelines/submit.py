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


def compile_pipeline(output: str | Path, *, image: str | None = None) -> Path:
    """Compile the training pipeline; with `image`, every step must run that image (else PipelineError).

    components/_image.py reads DINO_IMAGE when it is first imported, so `image` is set there before the
    pipeline is imported; a process that imported the components earlier with another image is told so.
    """
    import os

    from kfp import compiler

    if image:
        os.environ["DINO_IMAGE"] = image
    from pipelines.training import dino_training_pipeline

    compiler.Compiler().compile(dino_training_pipeline, str(output))
    if image:
        found = compiled_images(output)
        if found != {image}:
            raise PipelineError(f"the compiled pipeline runs {sorted(found)}, not {image}: components/_image.py "
                                "was imported with another DINO_IMAGE in this process")
    return Path(output)


def compiled_images(package: str | Path) -> set[str]:
    """The container images of every executor in a compiled pipeline (IR YAML)."""
    import yaml

    docs = [d for d in yaml.safe_load_all(Path(package).read_text()) if d]
    executors = docs[0].get("deploymentSpec", {}).get("executors", {})
    return {e["container"]["image"] for e in executors.values() if "container" in e}


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
           schedule: str | None = None, package: str | Path | None = None, registered: str | None = None,
           namespace: str | None = None, image: str | None = None, client=None, timeout_s: float = 120.0
           ) -> dict[str, Any]:
    """Create a run (or a recurring run when `schedule` is given); returns its ids.

    The run uses `package`, else the registered pipeline version `registered` ("NAME@VERSION", see
    `upload`), else the pipeline compiled now (running `image` when given). `namespace` is the KFP
    multi-user profile namespace, passed to every call. Without an injected `client` the call runs in
    a child process that is killed after `timeout_s`.
    """
    if schedule:
        check_cron(schedule)
        if not params.get("data_repo"):
            raise ConfigError("a recurring run needs the data repository: add --param data_repo=<git URL> (its "
                              "data step has nothing to clone otherwise, and every scheduled run would fail)")
    if registered and "@" not in registered:
        raise ConfigError(f"registered pipeline {registered!r} must be NAME@VERSION, e.g. dino-training@0.1.0")
    kwargs = {"params": params, "experiment": experiment, "run_name": run_name, "schedule": schedule,
              "package": str(package) if package else None, "registered": registered, "namespace": namespace,
              "image": image}
    return _call(_submit, host, kwargs, client, timeout_s)


def run_state(host: str, run_id: str, *, namespace: str | None = None, client=None, timeout_s: float = 120.0
              ) -> str:
    """The KFP runtime state of a run (PENDING, RUNNING, SUCCEEDED, FAILED, CANCELED, ...), NOT_FOUND if none."""
    return _call(_run_state, host, {"run_id": run_id, "namespace": namespace}, client, timeout_s)["state"]


def upload(host: str, *, version: str, name: str = "dino-training", namespace: str | None = None, client=None,
           timeout_s: float = 120.0) -> dict[str, Any]:
    """Register the pipeline compiled now as version `version` of pipeline `name` (created when absent)."""
    kwargs = {"name": name, "version": version, "namespace": namespace}
    return _call(_upload, host, kwargs, client, timeout_s)


def _call(fn, host: str, kwargs: dict[str, Any], client, timeout_s: float) -> dict[str, Any]:
    if client is not None:
        return _api_errors(fn, host, client=client, **kwargs)
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_in_child, args=(send, fn, host, kwargs), daemon=True)
    child.start()
    send.close()
    try:
        if not receive.poll(timeout_s):
            raise PipelineError(f"the KFP API at {host} did not answer within {timeout_s:.0f} s")
        ok, value = receive.recv()
    except EOFError:
        raise PipelineError(f"calling the KFP API at {host} died (exit code {child.exitcode})") from None
    finally:
        if child.is_alive():
            child.kill()
        child.join()
        receive.close()
    if not ok:
        raise PipelineError(value)
    return value


def _in_child(send, fn, host: str, kwargs: dict[str, Any]) -> None:
    try:
        result = (True, _api_errors(fn, host, **kwargs))
    except Exception as exc:  # noqa: BLE001 - every failure travels back as one message
        result = (False, str(exc) if isinstance(exc, PipelineError) else f"{type(exc).__name__}: {exc}")
    send.send(result)
    send.close()


def _api_errors(fn, host: str, *, client=None, **kwargs) -> dict[str, Any]:
    import kfp

    try:
        client = client or kfp.Client(host=host, namespace=kwargs.get("namespace"), credentials=_token_credentials())
        return fn(client, host, **kwargs)
    except (OSError, ConnectionError) as exc:
        raise PipelineError(f"cannot reach the KFP API at {host}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - kfp raises urllib3/ApiException types from several layers
        if type(exc).__module__.startswith(("urllib3", "kfp_server_api", "requests")):
            raise PipelineError(f"the KFP API at {host} failed: {type(exc).__name__}: {exc}") from exc
        raise


def _token_credentials():
    """The projected ServiceAccount token (KF_PIPELINES_SA_TOKEN_PATH) when the file exists, else None.

    Given an explicit host, kfp.Client sends no token on its own: a multi-user KFP would refuse the call.
    """
    import os

    path = os.environ.get("KF_PIPELINES_SA_TOKEN_PATH", "")
    if not path or not Path(path).is_file():
        return None
    from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

    return ServiceAccountTokenVolumeCredentials(path)


def _run_state(client, host: str, *, run_id: str, namespace: str | None) -> dict[str, str]:
    from kfp_server_api.exceptions import ApiException

    try:
        run = client.get_run(run_id)
    except ApiException as exc:
        if exc.status == 404:
            return {"state": "NOT_FOUND"}
        raise
    return {"state": str(run.state or "RUNTIME_STATE_UNSPECIFIED")}


def _submit(client, host: str, *, params: dict[str, Any], experiment: str, run_name: str | None,
            schedule: str | None, package: str | None, registered: str | None, namespace: str | None,
            image: str | None = None) -> dict[str, Any]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        source: dict[str, Any] = {}
        if registered:
            source = _registered_ids(client, *registered.split("@", 1), namespace=namespace)
        else:
            source = {"pipeline_package_path": package
                      or str(compile_pipeline(Path(tmp) / "pipeline.yaml", image=image))}
        exp = client.create_experiment(name=experiment, namespace=namespace)
        if schedule:
            job = client.create_recurring_run(
                experiment_id=exp.experiment_id, job_name=run_name or "dino-training-schedule",
                cron_expression=schedule, params=params, max_concurrency=1, no_catchup=True, enabled=True,
                **source)
            return {"recurring_run_id": job.recurring_run_id, "experiment_id": exp.experiment_id,
                    "schedule": schedule, "host": host}
        run = client.run_pipeline(experiment_id=exp.experiment_id, job_name=run_name or "dino-training",
                                  params=params, **source)
        return {"run_id": run.run_id, "experiment": experiment, "host": host}


def _pipeline_id(client, name: str, namespace: str | None) -> str | None:
    """The id of pipeline `name`: the namespace's own first (multi-user KFP), else a shared one."""
    flt = json.dumps({"predicates": [{"key": "display_name", "operation": "EQUALS", "string_value": name}]})
    for scope in ([namespace] if namespace else []) + [None]:
        page = client.list_pipelines(filter=flt, namespace=scope, page_size=10)
        found = [p for p in page.pipelines or [] if p.display_name == name]
        if len(found) > 1:
            raise PipelineError(f"{len(found)} pipelines are named {name!r} in KFP; the name must be unique")
        if found:
            return found[0].pipeline_id
    return None


def _registered_ids(client, name: str, version: str, *, namespace: str | None = None) -> dict[str, str]:
    pipeline_id = _pipeline_id(client, name, namespace)
    if pipeline_id is None:
        where = f" in namespace {namespace!r} or shared" if namespace else ""
        raise PipelineError(f"no pipeline named {name!r} is registered{where}; upload it with "
                            f"`dino-mlops pipeline upload --version {version}`")
    token = ""
    while True:
        page = client.list_pipeline_versions(pipeline_id, page_token=token, page_size=100)
        for item in page.pipeline_versions or []:
            if item.display_name == version:
                return {"pipeline_id": pipeline_id, "version_id": item.pipeline_version_id}
        token = page.next_page_token
        if not token:
            raise PipelineError(f"pipeline {name!r} has no version {version!r}")


def _upload(client, host: str, *, name: str, version: str, namespace: str | None) -> dict[str, Any]:
    import tempfile

    from pipelines.training import dino_training_pipeline

    description = (dino_training_pipeline.description or "").strip()
    with tempfile.TemporaryDirectory() as tmp:
        package = str(compile_pipeline(Path(tmp) / "pipeline.yaml"))
        pipeline_id = _pipeline_id(client, name, namespace)
        if pipeline_id is None:
            pipeline_id = client.upload_pipeline(package, pipeline_name=name, description=description,
                                                 namespace=namespace).pipeline_id
        made = client.upload_pipeline_version(package, pipeline_version_name=version, pipeline_id=pipeline_id,
                                              description=description)
    return {"pipeline_id": pipeline_id, "pipeline_version_id": made.pipeline_version_id, "name": name,
            "version": version, "host": host}
