"""Releasing an exported model to a live Triton: the first version, or a rollout over the serving one.

`rollout.deploy` rolls N+1 out over a loaded model N; a server that serves nothing yet gets version 1
written, loaded and smoke-tested instead (and unloaded again if the smoke test fails). Either way a
successful release is recorded for Prometheus (deployed version, time, data version). Either path
checks the file against its export record (`record`, default the export report beside the file)
before its lineage is served as verified.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dino_model.errors import ServingError
from dino_model.export.lineage import LineageRecord
from dino_model.serving.admin_key import admin_headers_for
from dino_model.serving.client import LOAD_TIMEOUT_S, EmbeddingClient
from dino_model.serving.rollout import deploy, ready_versions
from dino_model.serving.smoke import default_tolerance, reference_embeddings, smoke_images, smoke_test
from dino_model.triton.config import DEFAULT_MODEL_NAME, RepositoryOptions, check_model_name
from dino_model.triton.ensemble import EntryPoints
from dino_model.triton.repository import served_contract, write_model_repository

logger = logging.getLogger(__name__)


def release(onnx_path: str | Path, repository: str | Path, *, url: str, model_name: str = DEFAULT_MODEL_NAME,
            flavour: str = "gpu", load_timeout_s: float = LOAD_TIMEOUT_S, record: LineageRecord | None = None,
            gateway: str | None = None, replicas: Sequence[str] = (), headers: dict[str, str] | None = None,
            smoke_image_dir: str | Path | None = None, tolerance: float | None = None,
            lineage: dict[str, str] | None = None) -> dict[str, Any]:
    """Deploy `onnx_path` as the next version of `model_name`; returns the deployment record.

    `flavour` is the backend of a first version (later ones keep the served one's). `replicas`: every
    server sharing `repository` (client.replica_urls), all switched together. `headers` carry the
    admin key (default: the key found for `repository`). `smoke_image_dir`, `tolerance` and `lineage`
    go to the rollout of a later version (rollout.deploy). A successful deployment is recorded at the
    Pushgateway `gateway` (None: $DINO_PUSHGATEWAY).
    """
    headers = headers or admin_headers_for(repository)  # the key of the server of `repository`
    client = EmbeddingClient(url, check_model_name(model_name), timeout_s=60.0, replicas=replicas, headers=headers)
    if ready_versions(client):
        result = deploy(onnx_path, repository, url=url, model_name=model_name, load_timeout_s=load_timeout_s,
                        record=record, replicas=replicas, headers=headers, smoke_image_dir=smoke_image_dir,
                        tolerance=tolerance, lineage=lineage)
    else:
        result = _first_release(client, onnx_path, Path(repository), flavour=flavour, load_timeout_s=load_timeout_s,
                                record=record, lineage=lineage)
    from dino_model.monitoring.metrics import record_deployment

    record_deployment(model_name, result["version"], data_version=result.get("lineage", {}).get("data_version", ""),
                      gateway=gateway)
    return result


def _first_release(client: EmbeddingClient, onnx_path: str | Path, repository: Path, *, flavour: str,
                   load_timeout_s: float, record: LineageRecord | None, lineage: dict[str, str] | None
                   ) -> dict[str, Any]:
    from tritonclient.utils import InferenceServerException

    model_dir = repository / client.model_name
    served_contract(onnx_path, record=record, **(lineage or {}))  # a file contradicting its record is refused first
    if model_dir.exists():
        shutil.rmtree(model_dir)  # nothing of it serves: a leftover of an earlier failed release
    written = write_model_repository(onnx_path, repository, RepositoryOptions(flavour=flavour,
                                                                              model_name=client.model_name),
                                     record=record, lineage=lineage)
    try:
        client.raw.load_model(client.model_name, headers=client.headers, client_timeout=load_timeout_s)
    except InferenceServerException as exc:
        shutil.rmtree(model_dir, ignore_errors=True)
        raise ServingError(f"version 1 of {client.model_name!r} failed to load on {client.url}: "
                           f"{str(exc.message()).split(chr(10))[0]}") from None
    contract = client.served.contract
    images = smoke_images(contract)
    smoke = smoke_test(client, "1", images, reference_embeddings(onnx_path, images),
                       tolerance=default_tolerance(client.served.config, contract))
    if not smoke.passed:
        client.raw.unload_model(client.model_name, headers=client.headers)
        shutil.rmtree(model_dir, ignore_errors=True)
        raise ServingError(f"version 1 of {client.model_name!r} failed its smoke test: {smoke.reason}")
    _load_entry_points(client, repository, load_timeout_s=load_timeout_s)
    logger.info("released %s version 1 on %s", client.model_name, client.url)
    return {"model": client.model_name, "url": client.url, "status": "deployed", "version": written["version"],
            "previous_versions": [], "serving_versions": ready_versions(client), "smoke": smoke.to_dict(),
            "lineage": contract.lineage}


def _load_entry_points(client: EmbeddingClient, repository: Path, *, load_timeout_s: float) -> None:
    """Load the ensembles and steps written beside a first version (later versions: they follow it)."""
    for name in EntryPoints(client.model_name).all:
        if (repository / name).is_dir():
            client.call(f"loading the entry point {name!r}", client.raw.load_model, name,
                        headers=client.headers, client_timeout=load_timeout_s)
