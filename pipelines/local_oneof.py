"""`dsl.OneOf` of artifacts in kfp.local, which KFP backends resolve and kfp 2.17's local runner does not.

The training pipeline joins the model of its one-node and multi-node branches with `dsl.OneOf`: a KFP
backend hands later steps the artifact of whichever branch ran. kfp.local (2.17) resolves a OneOf of
parameters that way but refuses one of artifacts ("Expected 1 artifact in ArtifactSelectorSpec. Got: 2").
`allow_artifact_oneof` gives the local runner the backend's rule for artifacts too, the same rule it
already applies to parameters: the one selector whose producer ran; none or several is an error. A
DAG output with one selector resolves exactly as before, so the change only adds what was refused.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


def allow_artifact_oneof() -> None:
    """Install the OneOf rule for artifact outputs of DAGs in kfp.local (idempotent)."""
    from kfp.local.orchestrator.orchestrator_utils import OrchestratorUtils

    if getattr(OrchestratorUtils.get_dag_output_artifacts, "__func__", None) is not _resolve:
        OrchestratorUtils.get_dag_output_artifacts = classmethod(_resolve)


def _resolve(cls: type, dag_outputs_spec: Any, io_store: Any) -> dict[str, Any]:
    """Each DAG output artifact: its one selector's, or for a OneOf the one branch that produced it."""
    outputs = {}
    for key, spec in dag_outputs_spec.artifacts.items():
        found = []
        for selector in spec.artifact_selectors:
            try:
                found.append(io_store.get_task_output(selector.producer_subtask, selector.output_artifact_key))
            except (KeyError, ValueError):  # that branch did not run
                if len(spec.artifact_selectors) == 1:
                    raise
        if len(found) != 1:
            raise ValueError(f"dsl.OneOf output {key!r}: {len(found)} of the conditional branches produced an "
                             "artifact, expected exactly one")
        outputs[key] = found[0]
    return outputs
