"""The quality gate: deploy a new model only when it is good enough and not worse than what serves.

The rule lives here, not in a pipeline component, so that it is tested on the CPU and the same
decision is made by the pipeline, the CLI and the retraining loop.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

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


def serving_score(url: str, model: str, metric: str, *, timeout_s: float = 10.0) -> float | None:
    """The `metric` recorded in the lineage of the model Triton serves at `url` (gRPC), or None.

    None when nothing is served yet or the served model carries no such metric; an unreachable server
    also gives None (with a warning), since a first deployment has no server to compare with.
    """
    from tritonclient.grpc import InferenceServerClient
    from tritonclient.utils import InferenceServerException

    try:
        client = InferenceServerClient(url=url)
        if not client.is_model_ready(model, client_timeout=timeout_s):
            return None
        config = client.get_model_config(model, as_json=True, client_timeout=timeout_s)["config"]
    except InferenceServerException as exc:
        logger.warning("cannot read the serving model %s at %s (%s): comparing with nothing", model, url, exc)
        return None
    raw = config.get("parameters", {}).get("metrics", {}).get("string_value", "")
    try:
        value = json.loads(raw).get(metric) if raw else None
    except json.JSONDecodeError:
        value = None
    return None if value is None else float(value)
