"""Retraining when a new DVC data version lands: compare, and submit exactly one pipeline run.

The data version at the tracked revision is compared with the version the serving model was trained
on (its lineage in Triton) and with the last version a run was submitted for (a state file). Checks
hold an exclusive lock while they decide and submit, so concurrent triggers start one run; the
trigger is written down as pending before submission, so a failed submission (an unreachable KFP
host) is retried by the next check instead of being lost. A check killed after KFP created the run
but before the state was written must not start a second one: the KFP submitter first looks for a
run already named for the data version and adopts it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dino_model.errors import DinoError, PipelineError

logger = logging.getLogger(__name__)

Submitter = Callable[[str], str]  # data md5 -> run id


@dataclass
class TriggerState:
    submitted_md5: str = ""
    run_id: str = ""
    submitted_at: float = 0.0
    pending_md5: str = ""


def read_state(path: Path) -> TriggerState:
    try:
        return TriggerState(**json.loads(path.read_text()))
    except FileNotFoundError:
        return TriggerState()
    except (ValueError, TypeError) as exc:
        raise PipelineError(f"retraining state {path} is corrupt ({exc}); move it away to start afresh") from exc


def write_state(path: Path, state: TriggerState) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2))
    tmp.replace(path)


@contextlib.contextmanager
def exclusive(path: Path, *, timeout_s: float = 600.0) -> Iterator[None]:
    """An advisory lock on `path`.lock, shared by every process and thread that checks this state."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as fh:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise PipelineError(
                        f"another retraining check holds {path}.lock for over {timeout_s:.0f} s") from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def check(current_md5: str, *, state_path: str | Path, submit: Submitter, deployed_md5: str | None = None
          ) -> dict[str, Any]:
    """Submit one run for `current_md5` unless it is deployed or already submitted; returns what happened."""
    state_path = Path(state_path)
    with exclusive(state_path):
        state = read_state(state_path)
        if current_md5 in {deployed_md5, state.submitted_md5}:
            reason = "deployed" if current_md5 == deployed_md5 else f"run {state.run_id} was submitted for it"
            logger.info("data version %s is unchanged (%s): nothing to do", current_md5, reason)
            return {"action": "none", "data_version": current_md5, "reason": reason}
        state.pending_md5 = current_md5
        write_state(state_path, state)
        try:
            run_id = submit(current_md5)
        except DinoError as exc:
            raise PipelineError(f"submitting a run for data version {current_md5} failed; the trigger stays "
                                f"pending in {state_path} and the next check retries it: {exc}") from exc
        write_state(state_path, TriggerState(submitted_md5=current_md5, run_id=run_id, submitted_at=time.time()))
    _record(current_md5)
    logger.info("new data version %s: submitted run %s", current_md5, run_id)
    return {"action": "submitted", "data_version": current_md5, "run_id": run_id,
            "previous": state.submitted_md5 or None, "deployed": deployed_md5}


def _record(md5: str) -> None:
    from dino_model.monitoring.metrics import record_data_version

    record_data_version(md5)


def run_name(md5: str) -> str:
    """The KFP run name for a data version: the key that makes a resubmission find the earlier run."""
    return f"dino-retrain-{md5[:12]}"


def kfp_submitter(host: str, *, params: dict[str, Any], experiment: str = "dino-mlops",
                  timeout_s: float = 120.0, namespace: str | None = None) -> Submitter:
    """Submit the training pipeline to KFP, with the data version as a parameter and in the run name.

    A run already named for the data version in `experiment` is adopted instead of creating another.
    Each KFP call is bounded by `timeout_s`: the lock a check holds is never held much longer.
    """

    def submit(md5: str) -> str:
        from pipelines.submit import _call
        from pipelines.submit import submit as kfp_submit

        name = run_name(md5)
        found = _call(_find_run, host, {"experiment": experiment, "name": name, "namespace": namespace}, None,
                      timeout_s)
        if found["run_id"]:
            logger.info("KFP already has run %s (%s) for data version %s: adopting it", found["run_id"], name, md5)
            return found["run_id"]
        result = kfp_submit(host, params={**params, "data_version": md5}, experiment=experiment, run_name=name,
                            namespace=namespace, timeout_s=timeout_s)
        return result["run_id"]

    return submit


def _find_run(client, host: str, *, experiment: str, name: str, namespace: str | None) -> dict[str, str]:
    """The id of a run named `name` in `experiment` ("" when there is none); runs in pipelines.submit's child."""
    try:
        exp = client.get_experiment(experiment_name=experiment, namespace=namespace)
    except ValueError as exc:
        if str(exc).startswith("No experiment is found with name"):
            return {"run_id": ""}
        raise
    flt = json.dumps({"predicates": [{"key": "display_name", "operation": "EQUALS", "string_value": name}]})
    page = client.list_runs(experiment_id=exp.experiment_id, filter=flt, page_size=10, namespace=namespace)
    runs = [r for r in page.runs or [] if r.display_name == name]
    return {"run_id": runs[0].run_id if runs else ""}


def deployed_data_version(url: str, model: str = "dino", *, repository: str | Path | None = None) -> str | None:
    """The data md5 in the verified lineage of the model Triton serves, or None when nothing (reachable) serves.

    A file that merely claims a data version must not stop retraining, so unverified lineage counts as none.
    With `repository` (the server's own) a deploy killed midway is finished first; without it, a server
    showing an unfinished deploy raises ServingError (gate.served_lineage), so the check decides nothing
    from a model that may be rolled back.
    """
    from dino_model.serving.gate import served_lineage

    return (served_lineage(url, model, repository=repository) or {}).get("data_version") or None
