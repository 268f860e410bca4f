"""The quality gate: deploy a new model only when it is good enough and not worse than what serves.

The rule lives here, not in a pipeline component, so that it is tested on the CPU and the same
decision is made by the pipeline, the CLI and the retraining loop. The serving model's score, the bar
a candidate must not fall below, is read only from lineage that serving verified against the file's
export record (the `lineage_verified` parameter, dino_model/export/lineage.py): metrics that a file
merely claims in its own metadata never set the bar, and the served config's signature is checked
again here with the trusted public keys (dino_model/export/signing.py), so a config.pbtxt edited to
claim more is not read either. Unverified lineage means "no verified bar": the candidate must still
reach the absolute threshold, but is not compared with a score nobody can vouch for (holding would
let a forged claim block every genuine model).

`served_lineage` is that one reading of a live server's lineage; the retraining check
(pipelines/retrain.py) reads the deployed data version through it. A server in the middle of a
deploy has no single served lineage: given the repository (and so the admin key), the reading first
finishes a deploy that was killed (rollout.recover); with only a URL it refuses to read a server
that shows an unfinished deploy (two versions READY, or a config.pbtxt pinned by a deploy) and
raises, rather than compare with a model that may be rolled back a moment later.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dino_model.errors import ServingError
from dino_model.export.lineage import RECORDED_KEYS, verified_lineage
from dino_model.triton.config import check_model_name, config_parameters

logger = logging.getLogger(__name__)

DEPLOY, HOLD = "deploy", "hold"


@dataclass(frozen=True)
class GateDecision:
    decision: str  # "deploy" or "hold"
    reason: str
    candidate: float
    serving: float | None

    def to_dict(self) -> dict:
        return {"decision": self.decision, "reason": self.reason, "candidate": self.candidate,
                "serving": self.serving}


def decide(candidate: float, *, threshold: float, serving: float | None = None,
           require_not_worse: bool = True, tolerance: float = 0.0) -> GateDecision:
    """`deploy` when candidate >= threshold and, if required, candidate >= serving - tolerance."""
    if candidate < threshold:
        return GateDecision(HOLD, f"score {candidate:.2f} is below the threshold {threshold:.2f}", candidate, serving)
    if require_not_worse and serving is not None and candidate < serving - tolerance:
        return GateDecision(HOLD, f"score {candidate:.2f} is worse than the serving model's {serving:.2f}",
                            candidate, serving)
    return GateDecision(DEPLOY, f"score {candidate:.2f} passes (threshold {threshold:.2f}, serving "
                                f"{'none' if serving is None else f'{serving:.2f}'})", candidate, serving)


def served_lineage(url: str, model: str, *, timeout_s: float = 10.0, repository: str | Path | None = None,
                   headers: dict[str, str] | None = None, replicas: Sequence[str] = ()) -> dict[str, str] | None:
    """The verified lineage of the model Triton serves at `url` (gRPC), or None.

    None when nothing is served yet or the served lineage is not verified; an unreachable server also
    gives None (with a warning), since a first deployment has no server to compare with. The quality
    gate and the retraining check both read the serving model's lineage here. With `repository` (the
    server's own, and `headers`, its admin key; default: the key found for it) a deploy of `model`
    that was killed is finished first, on every server of `replicas` (client.replica_urls) as a deploy does.

    Raises:
        ServingError: the server shows an unfinished deploy of `model` (see `unfinished_deploy`), or
            finishing one failed.
    """
    from tritonclient.grpc import InferenceServerClient
    from tritonclient.utils import InferenceServerException

    check_model_name(model)
    if repository is not None:
        _finish_deploy(url, model, Path(repository), headers, replicas)
    try:
        client = InferenceServerClient(url=url)
        if not client.is_model_ready(model, client_timeout=timeout_s):
            return None
        config = client.get_model_config(model, as_json=True, client_timeout=timeout_s)["config"]
        versions = client.get_model_metadata(model, as_json=True, client_timeout=timeout_s).get("versions", [])
    except InferenceServerException as exc:
        logger.warning("cannot read the serving model %s at %s (%s): taking it as none", model, url, exc)
        return None
    source = f"model {model!r} at {url}"
    reason = unfinished_deploy(config, versions)
    if reason:
        raise ServingError(f"{source} is in the middle of a deploy ({reason}), so its lineage is not read: wait for "
                           "the deploy, or finish it with `dino-mlops deploy --recover` (or restart the server)")
    return config_lineage(config, source=source)


def unfinished_deploy(config: dict[str, Any], versions: list[str]) -> str:
    """Why a served model looks mid-deploy from its config and READY versions (model metadata), or ""."""
    from dino_model.serving.rollout import UNFINISHED_KEY

    pending = config_parameters(config).get(UNFINISHED_KEY)
    if pending:
        return f"its config.pbtxt is pinned while version {pending} is added"
    policy = config.get("version_policy", {})
    wanted = len(versions) <= policy.get("latest", {}).get("num_versions", 1) or "all" in policy
    if len(versions) > 1 and not wanted:  # one config, one lineage: it cannot describe both versions
        return f"versions {', '.join(sorted(versions, key=int))} are READY together (version policy {policy})"
    return ""


def _finish_deploy(url: str, model: str, repository: Path, headers: dict[str, str] | None,
                   replicas: Sequence[str]) -> None:
    """rollout.recover of `model` when the repository holds a journal or leftovers of a killed deploy."""
    from dino_model.serving.rollout import recover, unfinished

    if model not in unfinished(repository):
        return
    result = recover(repository, url=url, model_name=model, headers=headers, replicas=replicas)
    logger.warning("finished an interrupted deploy of %s before reading its lineage: %s", model, result["action"])


def config_lineage(config: dict[str, Any], *, source: str = "the serving model") -> dict[str, str] | None:
    """The lineage in a served config, or None (with a warning when it claims one) unless verified at deploy."""
    params = config_parameters(config)
    lineage = verified_lineage(params)
    if lineage is None and any(params.get(key) for key in RECORDED_KEYS):
        logger.warning("the lineage of %s was not verified against an export record: it is ignored", source)
    return lineage


def serving_score(url: str, model: str, metric: str, *, timeout_s: float = 10.0,
                  repository: str | Path | None = None, headers: dict[str, str] | None = None,
                  replicas: Sequence[str] = ()) -> float | None:
    """The `metric` recorded in the verified lineage of the model Triton serves at `url` (gRPC), or None.

    None when nothing is served yet, the served model carries no such metric, or its lineage is not
    verified; an unreachable server also gives None (see served_lineage, also for `repository`).
    """
    lineage = served_lineage(url, model, timeout_s=timeout_s, repository=repository, headers=headers,
                             replicas=replicas)
    return _metric(lineage, metric)


def verified_score(config: dict[str, Any], metric: str, *, source: str = "the serving model") -> float | None:
    """`metric` from a served config's lineage, or None unless that lineage was verified at deploy."""
    return _metric(config_lineage(config, source=source), metric)


def _metric(lineage: dict[str, str] | None, metric: str) -> float | None:
    raw = (lineage or {}).get("metrics", "")
    try:
        value = json.loads(raw).get(metric) if raw else None
    except (json.JSONDecodeError, AttributeError):
        value = None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
