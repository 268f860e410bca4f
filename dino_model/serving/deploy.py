"""`dino-mlops deploy`: put a new model version into service on a live Triton, or leave the old one serving.

Triton no longer documents an EXPLICIT-mode reload as free of downtime (MLOPS_REFERENCE §2.4), and it
answers unpinned requests with the highest ready version, so a new version must be proven before it
ever becomes ready under the served name. The rollout therefore runs in two stages:

1. candidate: the new file is loaded as a separate model `<name>_candidate` and smoke-tested over
   gRPC against in-process onnxruntime (smoke.py); clients never see it. A load failure or a failed
   smoke test ends the deploy here, and nothing about the served model has changed.
2. promote: the file becomes version N+1 of the served model, loaded with a configuration override
   whose version policy serves N and N+1 together; N+1 is smoke-tested again with pinned requests,
   and only then the final config.pbtxt (the usual `latest` policy, the new lineage) is loaded,
   which retires N. On any failure N+1's folder is removed, the previous config.pbtxt is restored
   and reloaded, and N is checked to be ready before the command exits non-zero with the reason.

While the new version is being added, config.pbtxt on disk pins the versions being served, so a
server restart in the middle cannot pick up an untested folder. tests/dino_model/serving proves the
switch under concurrent clients with zero failed requests.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dino_model.errors import ConfigError, ServingError
from dino_model.export.contract import LINEAGE_KEYS, PREFIX, ModelContract
from dino_model.export.triton import read_config, served_contract, version_folders, write_config, write_version
from dino_model.export.triton_config import config_parameters, flavour_of
from dino_model.serving.client import EmbeddingClient
from dino_model.serving.smoke import default_tolerance, reference_embeddings, smoke_images, smoke_test

logger = logging.getLogger(__name__)

CANDIDATE_SUFFIX = "_candidate"


class RolloutError(Exception):
    """Internal: the new version must not serve; carries the reason."""


def deploy(onnx_path: str | Path, repository: str | Path, *, url: str, model_name: str = "dino",
           smoke_image_dir: str | Path | None = None, tolerance: float | None = None,
           lineage: dict[str, str] | None = None, load_timeout_s: float = 600.0,
           headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Roll `onnx_path` out as the next version of `model_name` on the Triton at `url`.

    `headers` go with every call (the admin key of a server that restricts its repository API).

    Raises:
        ServingError: the server is unreachable, or the new version failed to load or its smoke
            test, in which case the versions that served before still serve (the message says why).
    """
    started = time.monotonic()
    model_dir = Path(repository) / model_name
    with _deploy_lock(model_dir):
        client = EmbeddingClient(url, model_name, timeout_s=60.0, headers=headers)
        config = read_config(model_dir)
        serving = ready_versions(client)
        missing = [v for v in serving if v not in version_folders(model_dir)]
        if not serving or missing:
            raise ServingError(f"model {model_name!r} on {url} serves versions {serving}, which {model_dir} does not "
                               "hold: deploy needs the live server's own repository and a loaded model")
        contract = served_contract(onnx_path, **(lineage or {}))
        check_compatible(ModelContract.from_properties(config_parameters(config), source=str(model_dir)), contract)
        new_config = with_contract(config, contract)
        tolerance = tolerance or default_tolerance(new_config, contract)
        images = smoke_images(contract, image_dir=smoke_image_dir)
        flavour = flavour_of(config)
        version = max(version_folders(model_dir)) + 1
        try:
            candidate, reference = run_candidate(client, Path(repository), onnx_path, new_config, flavour=flavour,
                                                 images=images, tolerance=tolerance, load_timeout_s=load_timeout_s)
            smoke = promote(client, model_dir, onnx_path, new_config, version=version, serving=serving,
                            flavour=flavour, images=images, reference=reference, tolerance=tolerance,
                            load_timeout_s=load_timeout_s)
        except RolloutError as exc:
            raise ServingError(f"version {version} of {model_name!r} was not deployed: {exc}; "
                               f"version(s) {ready_versions(client)} keep serving") from None
    return {"model": model_name, "url": url, "repository": str(repository), "status": "deployed",
            "version": version, "previous_versions": serving, "serving_versions": ready_versions(client),
            "candidate_smoke": candidate, "smoke": smoke, "lineage": contract.lineage,
            "seconds": round(time.monotonic() - started, 2)}


def ready_versions(client: EmbeddingClient) -> list[int]:
    """Versions of the client's model that the server reports READY."""
    index = client.call("reading the repository index", client.raw.get_model_repository_index, as_json=True)
    return sorted(int(m["version"]) for m in index.get("models", [])
                  if m.get("name") == client.model_name and m.get("state") == "READY" and m.get("version"))


def check_compatible(current: ModelContract, new: ModelContract) -> None:
    """ConfigError when the new file changes what clients send or receive."""
    keys = ("input_shape", "embed_dim", "outputs", "num_patches", "mean", "std", "resize_size")
    changed = {k: (getattr(current, k), getattr(new, k)) for k in keys if getattr(current, k) != getattr(new, k)}
    if changed:
        raise ConfigError(f"the new model changes the serving contract {changed}; clients would break, "
                          "so serve it under a new model name (dino-mlops triton-repo --model-name ...)")


def with_contract(config: dict[str, Any], contract: ModelContract) -> dict[str, Any]:
    """The config with the contract and lineage parameters of `contract` (other parameters kept)."""
    kept = {k: v for k, v in config.get("parameters", {}).items() if not k.startswith(PREFIX) and k not in LINEAGE_KEYS}
    return config | {"parameters": kept | {k: {"string_value": v} for k, v in contract.to_properties().items()}}


def run_candidate(client: EmbeddingClient, repository: Path, onnx_path: str | Path, config: dict[str, Any], *,
                  flavour: str, images: np.ndarray, tolerance: float, load_timeout_s: float
                  ) -> tuple[dict[str, Any], np.ndarray]:
    """Load the file as `<model>_candidate`, smoke-test it, unload and delete it; RolloutError if bad.

    Returns the smoke report and the reference embeddings (in-process onnxruntime on `images`).
    """
    name = client.model_name + CANDIDATE_SUFFIX
    folder = repository / name
    shutil.rmtree(folder, ignore_errors=True)  # a leftover of an interrupted deploy
    write_version(onnx_path, folder, 1, flavour=flavour)
    write_config(folder, config | {"name": name, "version_policy": {"latest": {"num_versions": 1}}})
    candidate = EmbeddingClient(client.url, name, timeout_s=client.timeout_s, headers=client.headers)
    try:
        _load(client, name, load_timeout_s=load_timeout_s)
        reference = _reference(onnx_path, images)
        report = smoke_test(candidate, "1", images, reference, tolerance=tolerance)
    finally:
        with contextlib.suppress(ServingError):
            client.call("unloading the candidate", client.raw.unload_model, name)
        shutil.rmtree(folder, ignore_errors=True)
    if not report.passed:
        raise RolloutError(f"its smoke test failed ({report.reason})")
    return report.to_dict(), reference


def _reference(onnx_path: str | Path, images: np.ndarray) -> np.ndarray:
    try:
        return reference_embeddings(onnx_path, images)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise RolloutError(f"in-process onnxruntime cannot run it ({type(exc).__name__}: {exc})") from None


def promote(client: EmbeddingClient, model_dir: Path, onnx_path: str | Path, config: dict[str, Any], *,
            version: int, serving: list[int], flavour: str, images: np.ndarray, reference: np.ndarray, tolerance: float,
            load_timeout_s: float) -> dict[str, Any]:
    """Serve `version` beside `serving`, smoke-test it pinned, then retire per the policy; roll back on failure."""
    config_path = model_dir / "config.pbtxt"
    original = config_path.read_text()
    pinned = {"specific": {"versions": serving}}
    write_config(model_dir, read_config(model_dir) | {"version_policy": pinned})
    write_version(onnx_path, model_dir, version, flavour=flavour)
    try:
        both = config | {"version_policy": {"specific": {"versions": [*serving, version]}}}
        _load(client, client.model_name, config=both, load_timeout_s=load_timeout_s)
        report = smoke_test(client, str(version), images, reference, tolerance=tolerance)
        if not report.passed:
            raise RolloutError(f"its smoke test inside {client.model_name!r} failed ({report.reason})")
        write_config(model_dir, config)
        _load(client, client.model_name, load_timeout_s=load_timeout_s)
    except BaseException:
        rollback(client, model_dir, version=version, original_config=original, serving=serving)
        raise
    logger.info("%s version %d is serving; retired %s", client.model_name, version,
                [v for v in serving if v not in ready_versions(client)])
    return report.to_dict()


def rollback(client: EmbeddingClient, model_dir: Path, *, version: int, original_config: str,
             serving: list[int]) -> None:
    """Remove `version`, restore and reload the previous config, and check `serving` is ready again."""
    logger.warning("rolling back %s version %d", client.model_name, version)
    shutil.rmtree(model_dir / str(version), ignore_errors=True)
    (model_dir / "config.pbtxt").write_text(original_config)
    client.call("reloading the previous versions", client.raw.load_model, client.model_name)
    back = ready_versions(client)
    if not set(serving) <= set(back):
        raise ServingError(f"rollback of {client.model_name!r} left versions {back} ready instead of {serving}")


def _load(client: EmbeddingClient, name: str, *, config: dict[str, Any] | None = None, load_timeout_s: float) -> None:
    from tritonclient.utils import InferenceServerException

    try:
        client.raw.load_model(name, config=json.dumps(config) if config else None, headers=client.headers,
                              client_timeout=load_timeout_s)
    except InferenceServerException as exc:
        message = str(exc.message()).split("\n\nAt:")[0].strip()  # drop the Python backend's traceback
        raise RolloutError(f"it failed to load ({message})") from None


@contextlib.contextmanager
def _deploy_lock(model_dir: Path) -> Iterator[None]:
    """One deploy per model folder at a time: an advisory lock on the folder itself (no file left behind)."""
    if not model_dir.is_dir():
        raise ConfigError(f"{model_dir} does not exist; write the repository with `dino-mlops triton-repo` first")
    fd = os.open(model_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ServingError(f"another deploy of {model_dir} is running; wait for it to finish") from None
        yield
    finally:
        os.close(fd)
