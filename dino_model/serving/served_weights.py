"""The weights of the model Triton serves now: where a retraining that continues from it starts.

The data flywheel retrains on the served model's data plus what production captured, and starts from
the served model's weights rather than from random ones, so a short schedule suffices. Each version
folder of the repository keeps the teacher backbone its ONNX file was exported from
(`backbone.safetensors`, dino_model/triton/repository.py). Which version serves is Triton's answer
(the newest READY one), read after a deploy that was killed midway is finished, as the quality gate
reads the served score (gate.served_lineage). Version folders are immutable, and the sha256 taken
here travels with the path, so the step that reads the file checks it is the file that was resolved
(a version retired in between is a clear error, not other weights).

Nothing served, or a served version deployed before its folder kept weights, means "start from
scratch", said in the log; an unreachable server is an error (the pipeline step retries), since
training from scratch on a short continued schedule would not give a model worth gating.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dino_model.errors import CheckpointError
from dino_model.runtime.digests import file_sha256
from dino_model.triton.config import check_model_name, check_version
from dino_model.triton.repository import WEIGHTS_FILE

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedWeights:
    path: str
    sha256: str
    version: int


def weights_of_version(repository: str | Path, model: str, version: int) -> Path:
    """`<repository>/<model>/<version>/backbone.safetensors` (which may not exist)."""
    return Path(repository) / check_model_name(model) / str(check_version(version)) / WEIGHTS_FILE


def served_version(url: str, model: str, *, timeout_s: float = 10.0) -> int | None:
    """The newest READY version of `model` at `url` (gRPC, what an unpinned request reaches), or None when
    it is not served.

    Raises:
        ServingError: the server cannot be read.
    """
    from dino_model.serving.client import EmbeddingClient
    from dino_model.serving.index import served_version as newest_ready

    client = EmbeddingClient(url, model, timeout_s=timeout_s)
    if not client.call(f"asking whether {model!r} is ready", client.raw.is_model_ready, model):
        return None
    return int(newest_ready(client))


def resolve_served_weights(url: str, model: str, repository: str | Path, *,
                           replicas: Sequence[str] = ()) -> ServedWeights | None:
    """The served version's weights file and its sha256, or None (logged) when there is none to start from."""
    from dino_model.serving.gate import served_lineage

    served_lineage(url, model, repository=repository, replicas=replicas)  # finishes a killed deploy first
    version = served_version(url, model)
    if version is None:
        logger.info("no version of %s serves at %s: pretraining starts from scratch", model, url)
        return None
    path = weights_of_version(repository, model, version)
    if not path.is_file():
        logger.warning("version %d of %s keeps no weights (%s; deployed before exports kept them): pretraining "
                       "starts from scratch", version, model, path)
        return None
    weights = ServedWeights(path=str(path), sha256=file_sha256(path), version=version)
    logger.info("pretraining starts from the weights of %s version %d: %s (sha256 %s...)", model, version, path,
                weights.sha256[:12])
    return weights


def verified_weights(path: str | Path, sha256: str) -> Path:
    """`path`, once its bytes are checked to be those resolved (`sha256`).

    Raises:
        CheckpointError: the file is gone (the version was retired since) or holds other bytes.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"the served weights {path} are gone (the version was retired since they were "
                              "resolved): rerun the pipeline to start from the version serving now")
    actual = file_sha256(path)
    if actual != sha256:
        raise CheckpointError(f"{path} has sha256 {actual[:16]}..., not the {sha256[:16]}... resolved: "
                              "refusing to start from other weights than those recorded")
    return path
