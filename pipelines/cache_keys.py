"""Which tasks of the compiled pipeline a repeated run reuses, read from the IR alone.

A KFP backend keys a task's cache on its container (image, command, arguments), its input
parameters' values and its input artifacts' identities (backend/src/v2/cacheutils). This module plays
that rule over the compiled pipeline spec for one run: pipeline arguments and the outputs of the
never-cached tasks are given, `{{$.pipeline_job_*}}` and `{{$.pipeline_task_*}}` placeholders take the
run's own value, an artifact made by a task that does not cache is new in every run, and one made by
a cached task is the same artifact whenever that task's key repeats. Two runs that differ only in
their run id then show which tasks could hit the cache, and which input of a task that should is a
per-run value (tests/pipelines/test_cache_ir.py, docs/pipelines.md).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

PER_RUN = re.compile(r"\{\{\$\.pipeline_(job|task)_[a-z_]+\}\}")
INPUT_REF = re.compile(r"\{\{\$\.inputs\.parameters\['([^']+)'\]\}\}")


@dataclass
class Run:
    """One simulated run: its id, its arguments, and what the never-cached tasks return in it."""

    run_id: str
    arguments: dict[str, Any] = field(default_factory=dict)
    uncached_outputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # task -> output key -> value


@dataclass(frozen=True)
class TaskKey:
    """A task's cache key in one run (None when it never caches) and the per-run inputs that fed it."""

    path: str
    key: str | None
    per_run_inputs: tuple[str, ...]


def cache_keys(spec: dict[str, Any], run: Run) -> dict[str, TaskKey]:
    """Every task's key in `run`, by its path (`exit-handler-1/pretrain`)."""
    root_inputs = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    scope = {name: ("value", run.arguments.get(name, p.get("defaultValue"))) for name, p in root_inputs.items()}
    keys: dict[str, TaskKey] = {}
    _walk(spec, spec["root"]["dag"], scope, {}, "", run, keys)
    return keys


def _walk(spec: dict, dag: dict, params: dict, artifacts: dict, prefix: str, run: Run,
          keys: dict[str, TaskKey]) -> dict[str, tuple[dict, dict]]:
    """Key every task of `dag`; returns each task's outputs (parameters, artifacts) as values."""
    tasks = dag.get("tasks", {})
    done: dict[str, tuple[dict, dict]] = {}  # task -> (output parameters, output artifacts) as values
    for name in _order(tasks):
        task = tasks[name]
        in_params = {k: _param(v, params, done, run, name, tasks) for k, v in
                     task.get("inputs", {}).get("parameters", {}).items()}
        in_params = {k: _expand(v, in_params, run) for k, v in in_params.items()}
        in_arts = {k: _artifact(v, artifacts, done) for k, v in task.get("inputs", {}).get("artifacts", {}).items()}
        component = spec["components"][task["componentRef"]["name"]]
        path = f"{prefix}{name}"
        if "dag" in component:  # a condition or exit-handler group: its tasks see these as their inputs
            inner = _walk(spec, component["dag"], in_params, in_arts, f"{path}/", run, keys)
            done[name] = ({}, _group_outputs(component["dag"], inner))
            continue
        cached = bool(task.get("cachingOptions", {}).get("enableCache"))
        per_run = tuple(sorted(k for k, v in {**in_params, **in_arts}.items() if _is_per_run(v, run)))
        executor = spec["deploymentSpec"]["executors"][component["executorLabel"]]["container"]
        material = {"image": executor.get("image"), "command": executor.get("command"), "args": executor.get("args"),
                    "parameters": in_params, "artifacts": in_arts}
        key = hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest() if cached \
            else None
        keys[path] = TaskKey(path, key, per_run)
        outputs = component.get("outputDefinitions", {})
        identity = key if key is not None else f"{run.run_id}/{path}"  # an uncached task's artifacts are new
        out_arts = {k: ("artifact", f"{identity}#{k}") for k in outputs.get("artifacts", {})}
        given = run.uncached_outputs.get(name, {})
        out_params = {k: ("value", given[k]) if key is None and k in given else ("output", f"{identity}#{k}")
                      for k in outputs.get("parameters", {})}
        done[name] = (out_params, out_arts)
    return done


def _group_outputs(dag: dict, inner: dict[str, tuple[dict, dict]]) -> dict[str, tuple[str, Any]]:
    """A group's output artifacts: the one a selector picks, or (dsl.OneOf) whichever branch ran, which
    keys as all of its candidates together (each is stable only when every candidate is)."""
    outputs = {}
    for key, spec in dag.get("outputs", {}).get("artifacts", {}).items():
        picked = [inner[s["producerSubtask"]][1][s["outputArtifactKey"]] for s in spec.get("artifactSelectors", [])]
        outputs[key] = picked[0] if len(picked) == 1 else ("artifact", "oneof(" + ",".join(v for _, v in picked) + ")")
    return outputs


def _order(tasks: dict[str, dict]) -> list[str]:
    """Tasks with their producers first."""
    ordered: list[str] = []
    while len(ordered) < len(tasks):
        ready = [n for n, t in tasks.items() if n not in ordered and set(_needs(t)) <= set(ordered)]
        if not ready:
            raise ValueError(f"tasks {sorted(set(tasks) - set(ordered))} depend on one another in a cycle")
        ordered += sorted(ready)
    return ordered


def _needs(task: dict) -> list[str]:
    inputs = task.get("inputs", {})
    producers = [v.get("taskOutputParameter", {}).get("producerTask") for v in inputs.get("parameters", {}).values()]
    producers += [v.get("taskOutputArtifact", {}).get("producerTask") for v in inputs.get("artifacts", {}).values()]
    return [p for p in [*producers, *task.get("dependentTasks", [])] if p]


def _param(value: dict, params: dict, done: dict, run: Run, name: str, tasks: dict) -> tuple[str, Any]:
    if "componentInputParameter" in value:
        return params[value["componentInputParameter"]]
    if "taskOutputParameter" in value:
        ref = value["taskOutputParameter"]
        return done[ref["producerTask"]][0][ref["outputParameterKey"]]
    if "runtimeValue" in value:
        constant = value["runtimeValue"].get("constant")
        if isinstance(constant, str) and PER_RUN.search(constant):
            return ("per-run", PER_RUN.sub(run.run_id, constant))
        return ("value", constant)
    if "taskFinalStatus" in value:
        return ("per-run", f"{run.run_id}/status")
    raise ValueError(f"task {name}: unknown input parameter form {sorted(value)}")


def _expand(value: tuple[str, Any], inputs: dict, run: Run) -> tuple[str, Any]:
    """A constant that names another input of the same task (`{{$.inputs.parameters['x']}}`) takes its value."""
    kind, raw = value
    if kind != "value" or not isinstance(raw, str) or not INPUT_REF.search(raw):
        return value
    refs = [inputs[m] for m in INPUT_REF.findall(raw) if m in inputs]
    if any(k == "per-run" for k, _ in refs):
        return ("per-run", raw)
    return ("value", INPUT_REF.sub(lambda m: json.dumps(inputs.get(m.group(1), ("value", None))[1]), raw))


def _artifact(value: dict, artifacts: dict, done: dict) -> tuple[str, Any]:
    if "componentInputArtifact" in value:
        return artifacts[value["componentInputArtifact"]]
    ref = value["taskOutputArtifact"]
    return done[ref["producerTask"]][1][ref["outputArtifactKey"]]


def _is_per_run(value: tuple[str, Any], run: Run) -> bool:
    kind, raw = value
    return kind == "per-run" or (isinstance(raw, str) and run.run_id in raw)


def reused(spec: dict[str, Any], first: Run, second: Run) -> dict[str, bool]:
    """For each task that may cache: whether `second` finds the key `first` stored (a cache hit)."""
    a, b = cache_keys(spec, first), cache_keys(spec, second)
    return {path: a[path].key == b[path].key for path in a if a[path].key is not None}
