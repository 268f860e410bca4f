"""Retraining when a new DVC data version lands: compare, and submit exactly one pipeline run.

The data version at the tracked revision is compared with the version the serving model was trained
on (its lineage in Triton) and with the last version a run was submitted for (a state file). Checks
hold an exclusive lock while they decide and submit, so concurrent triggers start one run; the
trigger is written down as pending before submission, so a failed submission (an unreachable KFP
host) is retried by the next check instead of being lost. A check killed after KFP created the run
but before the state was written must not start a second one: the KFP submitter first looks for a
run already named for the data version and attempt, and adopts it.

A run that fails must not leave its data version untrained for good: each check asks KFP for the
state of the run it submitted and, when it FAILED (or KFP no longer knows it), submits the next
attempt once its backoff has passed (`RetryPolicy`), up to a limit. After the limit it stops,
records so in the state file and pushes `dino_retrain_gave_up`, on which an alert fires. A run
someone CANCELED is left alone: stopping it was a decision.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dino_model.errors import DinoError, PipelineError
from dino_model.runtime import atomic, locks
from dino_model.triton.config import DEFAULT_MODEL_NAME
from pipelines.retrain_settings import RetryPolicy

logger = logging.getLogger(__name__)

Submitter = Callable[[str, int], str]  # (data md5, attempt 1, 2, ...) -> run id
RunStateReader = Callable[[str], str]  # run id -> KFP runtime state (or NOT_FOUND)

# KFP v2beta1 runtime states after which the same data version is submitted again
RETRY_STATES = frozenset({"FAILED", "NOT_FOUND"})


@dataclass
class TriggerState:
    """The state file. Files written before retries existed lack `attempts` and `gave_up` (read as 1, False)."""

    submitted_md5: str = ""
    run_id: str = ""
    submitted_at: float = 0.0
    pending_md5: str = ""
    attempts: int = 0  # runs submitted for submitted_md5 (0 in an old file: one, when submitted_md5 is set)
    gave_up: bool = False  # the last allowed attempt failed: no more runs for submitted_md5
    run_state: str = ""  # the run's KFP state as the last check saw it

    def submitted_attempts(self) -> int:
        return max(self.attempts, 1) if self.submitted_md5 else 0


def read_state(path: Path) -> TriggerState:
    try:
        return TriggerState(**json.loads(path.read_text()))
    except FileNotFoundError:
        return TriggerState()
    except (ValueError, TypeError) as exc:
        raise PipelineError(f"retraining state {path} is corrupt ({exc}); move it away to start afresh") from exc


def write_state(path: Path, state: TriggerState) -> None:
    atomic.write_json(path, asdict(state), mode=0o644)


@contextlib.contextmanager
def exclusive(path: Path, *, timeout_s: float = 600.0) -> Iterator[None]:
    """An advisory lock on `path`.lock, shared by every process and thread that checks this state."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with locks.exclusive(path.with_suffix(".lock"), timeout_s=timeout_s):
            yield
    except locks.LockBusyError:
        raise PipelineError(f"another retraining check holds {path}.lock for over {timeout_s:.0f} s") from None


def check(current_md5: str, *, state_path: str | Path, submit: Submitter, deployed_md5: str | None = None,
          run_state: RunStateReader | None = None, retry: RetryPolicy | None = None,
          now: Callable[[], float] = time.time) -> dict[str, Any]:
    """Submit one run for `current_md5` unless it is deployed or already submitted; returns what happened.

    With `run_state`, a data version already submitted is followed up: its run's state is read and a
    FAILED run is submitted again under `retry` (see the module docstring).
    """
    state_path = Path(state_path)
    retry = retry or RetryPolicy()
    with exclusive(state_path):
        state = read_state(state_path)
        if current_md5 == deployed_md5:
            logger.info("data version %s is unchanged (deployed): nothing to do", current_md5)
            return {"action": "none", "data_version": current_md5, "reason": "deployed"}
        if current_md5 == state.submitted_md5:
            result = _follow_up(state, state_path, run_state=run_state, retry=retry, now=now)
            if result["action"] != "resubmit":
                return result
            attempt = state.submitted_attempts() + 1
        else:
            attempt = 1
        previous = state.submitted_md5
        state.pending_md5 = current_md5
        write_state(state_path, state)
        try:
            run_id = submit(current_md5, attempt)
        except DinoError as exc:
            raise PipelineError(f"submitting a run for data version {current_md5} failed; the trigger stays "
                                f"pending in {state_path} and the next check retries it: {exc}") from exc
        write_state(state_path, TriggerState(submitted_md5=current_md5, run_id=run_id, submitted_at=now(),
                                             attempts=attempt))
    if attempt == 1:
        _record(current_md5)
    _record_retraining(current_md5, attempts=attempt, gave_up=False)
    logger.info("data version %s: submitted run %s (attempt %d)", current_md5, run_id, attempt)
    return {"action": "submitted" if attempt == 1 else "resubmitted", "data_version": current_md5,
            "run_id": run_id, "attempt": attempt, "previous": previous or None, "deployed": deployed_md5}


def _follow_up(state: TriggerState, state_path: Path, *, run_state: RunStateReader | None, retry: RetryPolicy,
               now: Callable[[], float]) -> dict[str, Any]:
    """For a data version already submitted: nothing to do, waiting, given up, or {"action": "resubmit"}."""
    md5, attempts = state.submitted_md5, state.submitted_attempts()
    base = {"data_version": md5, "run_id": state.run_id, "attempt": attempts}
    if state.gave_up:
        reason = f"gave up after {attempts} failed runs"
        logger.info("data version %s: %s; push a new data version or remove %s", md5, reason, state_path)
        return {"action": "none", **base, "reason": reason}
    if run_state is None:
        logger.info("data version %s is unchanged (run %s was submitted for it): nothing to do", md5, state.run_id)
        return {"action": "none", **base, "reason": f"run {state.run_id} was submitted for it"}
    seen = run_state(state.run_id)
    if seen != state.run_state:
        state.run_state = seen
        write_state(state_path, state)
    if seen not in RETRY_STATES:
        logger.info("data version %s: run %s is %s", md5, state.run_id, seen)
        return {"action": "none", **base, "run_state": seen, "reason": f"run {state.run_id} is {seen}"}
    if attempts >= retry.max_attempts:
        state.gave_up = True
        write_state(state_path, state)
        _record_retraining(md5, attempts=attempts, gave_up=True)
        logger.error("data version %s: run %s is %s, the last of %d allowed attempts; giving up", md5,
                     state.run_id, seen, retry.max_attempts)
        return {"action": "gave_up", **base, "run_state": seen}
    due = retry.due_at(state.submitted_at, attempts)
    if now() < due:
        logger.info("data version %s: run %s is %s; attempt %d not before %s", md5, state.run_id, seen,
                    attempts + 1, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(due)))
        return {"action": "waiting", **base, "run_state": seen, "retry_at": due}
    logger.warning("data version %s: run %s is %s; submitting attempt %d of %d", md5, state.run_id, seen,
                   attempts + 1, retry.max_attempts)
    return {"action": "resubmit"}


def _record(md5: str) -> None:
    from dino_model.monitoring.metrics import record_data_version

    record_data_version(md5)


def _record_retraining(md5: str, *, attempts: int, gave_up: bool) -> None:
    from dino_model.monitoring.metrics import record_retraining

    record_retraining(md5, attempts=attempts, gave_up=gave_up)


def run_name(md5: str, attempt: int = 1) -> str:
    """The KFP run name for a data version and attempt: the key that makes a resubmission find the earlier run.

    The first attempt keeps the name runs had before retries existed, so their runs are still adopted.
    """
    name = f"dino-retrain-{md5[:12]}"
    return name if attempt <= 1 else f"{name}-attempt-{attempt}"


def kfp_submitter(host: str, *, params: dict[str, Any], experiment: str = "dino-mlops",
                  timeout_s: float = 120.0, namespace: str | None = None, registered: str | None = None,
                  image: str | None = None) -> Submitter:
    """Submit the training pipeline to KFP, with the data version as a parameter and in the run name.

    The run is made of the registered pipeline version `registered` (NAME@VERSION) when given, else
    of the pipeline compiled now with `image`. Every KFP call carries `namespace`. A run already named
    for the data version and attempt in `experiment` is adopted instead of creating another. Each KFP
    call is bounded by `timeout_s`: the lock a check holds is never held much longer.
    """

    def submit(md5: str, attempt: int = 1) -> str:
        from pipelines.submit import _call
        from pipelines.submit import submit as kfp_submit

        name = run_name(md5, attempt)
        found = _call(_find_run, host, {"experiment": experiment, "name": name, "namespace": namespace}, None,
                      timeout_s)
        if found["run_id"]:
            logger.info("KFP already has run %s (%s) for data version %s: adopting it", found["run_id"], name, md5)
            return found["run_id"]
        result = kfp_submit(host, params={**params, "data_version": md5}, experiment=experiment, run_name=name,
                            namespace=namespace, registered=registered, image=image, timeout_s=timeout_s)
        return result["run_id"]

    return submit


def kfp_run_state(host: str, *, timeout_s: float = 120.0, namespace: str | None = None) -> RunStateReader:
    """Reads a run's state from KFP (GET /apis/v2beta1/runs/{id}), bounded by `timeout_s`."""

    def read(run_id: str) -> str:
        from pipelines.submit import run_state

        return run_state(host, run_id, namespace=namespace, timeout_s=timeout_s)

    return read


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


def deployed_data_version(url: str, model: str = DEFAULT_MODEL_NAME, *,
                          repository: str | Path | None = None) -> str | None:
    """The data md5 in the verified lineage of the model Triton serves, or None when nothing (reachable) serves.

    A file that merely claims a data version must not stop retraining, so unverified lineage counts as none.
    With `repository` (the server's own) a deploy killed midway is finished first; without it, a server
    showing an unfinished deploy raises ServingError (gate.served_lineage), so the check decides nothing
    from a model that may be rolled back.
    """
    from dino_model.serving.gate import served_lineage

    return (served_lineage(url, model, repository=repository) or {}).get("data_version") or None
