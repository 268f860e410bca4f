"""`dino-mlops deploy`: put a new model version into service on a live Triton, or leave the old one serving.

Triton no longer documents an EXPLICIT-mode reload as free of downtime, and it
answers unpinned requests with the highest ready version, so a new version must be proven before it
ever becomes ready under the served name: a version loaded beside N under the same name would take
every unpinned request at once. The rollout therefore runs in two stages:

1. candidate: the new file is loaded as a separate model `<name>_candidate` and smoke-tested over
   gRPC (requests pinned to its version) against in-process onnxruntime (smoke.py); clients never
   see it. A load failure or a failed smoke test ends the deploy here, and nothing about the served
   model has changed. This is the pinned smoke test a version passes before it is promoted.
2. promote: the tested file becomes version N+1 of the served model while the loaded config still
   serves N alone (config.pbtxt on disk is pinned to N meanwhile, with a `deploy_unfinished`
   parameter, so a server restarted in the middle serves N and says a deploy is unfinished); then
   the final config.pbtxt (the usual `latest` policy, the new lineage) is loaded, which switches
   unpinned requests from N to N+1 in one reload, and N+1 is smoke-tested once more, pinned, inside
   the served model. On any failure N+1's folder is removed, the previous config.pbtxt is restored
   and reloaded, and N is checked to be ready before the command exits non-zero with the reason.

So no unpinned request reaches N+1 before it has passed its candidate smoke test and been
promoted, and at no step (a kill included) are N and N+1 both READY under the served name, except
for the instant of the switch itself. tests/dino_model/serving proves the switch under concurrent
clients with zero failed requests.

Crash safety. A deploy that is stopped (an error, Ctrl-C, SIGTERM) rolls back before it exits. One
that is killed outright cannot, so before promotion touches the served model it writes a journal,
`<model>/.deploy-journal.json` (atomically: a temporary file renamed over the old one), holding the
new version, the versions that served, the previous config.pbtxt and the final one, and the phase:
`promoting` until N+1's folder holds the file that passed the candidate test, then `promoted`.
Whoever comes next finishes the job under the same lock, without a person: the next deploy, the
server's start-up (server.TritonServer.start, so `dino-mlops serve` and the local pipeline server),
a quality gate or retraining check that is given the repository (gate.served_lineage), and
`dino-mlops deploy --recover`:

- phase `promoted` (N+1 passed the candidate test; only switching to it was left) and N+1's folder
  still holds that file: roll forward, i.e. write the final config and load it, so N+1 alone serves;
- any other phase: roll back to the versions that served before, exactly as a stopped deploy does.

Either way the candidate model, half-written version folders and temporary config files are removed
and the journal is deleted last, so a recovery that is itself killed is simply run again. Every step
is a reload of a model that keeps serving, so clients see no failed request (tests/dino_model/serving/
test_deploy_recovery.py kills real deploys at each named point below and recovers under load).
`DINO_DEPLOY_PAUSE_AT=<point>` makes a deploy stop at one of `PAUSE_POINTS`, for exactly that test.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dino_model.errors import ConfigError, ServingError
from dino_model.export.contract import LINEAGE_KEYS, PREFIX, ModelContract
from dino_model.export.lineage import LineageRecord, file_sha256
from dino_model.runtime import atomic, locks
from dino_model.runtime.pause import PausePoints
from dino_model.serving.admin_key import admin_headers_for
from dino_model.serving.client import LOAD_TIMEOUT_S, EmbeddingClient
from dino_model.serving.smoke import default_tolerance, reference_embeddings, smoke_images, smoke_test
from dino_model.triton.config import (
    CANDIDATE_SUFFIX,
    DEFAULT_MODEL_NAME,
    check_model_name,
    config_parameters,
    flavour_of,
)
from dino_model.triton.repository import (
    CONFIG_FILE,
    ONNX_FILE,
    read_config,
    served_contract,
    version_folders,
    write_config,
    write_version,
)

logger = logging.getLogger(__name__)

JOURNAL_FILE = ".deploy-journal.json"
# where DINO_DEPLOY_PAUSE_AT can stop a deploy, in the order a deploy passes them
PAUSE_POINTS = ("candidate-loaded", "promoting", "version-written", "promoted", "final-written", "final-loaded")
PAUSE = PausePoints("DINO_DEPLOY_PAUSE_AT", PAUSE_POINTS, "deploy paused at {point} ({env}={point}); pid {pid} waits "
                    "to be killed")
PAUSE_ENV = PAUSE.env
PROMOTING, PROMOTED, ROLLING_BACK = "promoting", "promoted", "rolling-back"
# config parameter of config.pbtxt while a deploy promotes: the version being added (read by gate.served_lineage)
UNFINISHED_KEY = "deploy_unfinished"


class RolloutError(Exception):
    """Internal: the new version must not serve; carries the reason."""


@dataclass
class Journal:
    """What an interrupted deploy needs to be finished: written before each step that touches the served model."""

    model: str
    version: int
    serving: list[int]
    original_config: str  # config.pbtxt text before the deploy
    final_config: dict[str, Any]  # the config N+1 serves under once promoted
    onnx_sha256: str  # of the file N+1's folder must hold to be rolled forward
    phase: str = PROMOTING
    pid: int = field(default_factory=os.getpid)

    def save(self, model_dir: Path, phase: str) -> None:
        """Record `phase` atomically (and durably: fsync of the file and of the folder)."""
        self.phase = phase
        atomic.write_json(model_dir / JOURNAL_FILE, asdict(self))

    @classmethod
    def load(cls, model_dir: Path) -> Journal | None:
        path = model_dir / JOURNAL_FILE
        try:
            return cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            raise ServingError(f"deploy journal {path} is unreadable ({exc}); check {model_dir / CONFIG_FILE} and "
                               "the version folders by hand, then delete the journal") from None

    @staticmethod
    def clear(model_dir: Path) -> None:
        (model_dir / JOURNAL_FILE).unlink(missing_ok=True)
        atomic.fsync(model_dir)


def deploy(onnx_path: str | Path, repository: str | Path, *, url: str, model_name: str = DEFAULT_MODEL_NAME,
           smoke_image_dir: str | Path | None = None, tolerance: float | None = None,
           lineage: dict[str, str] | None = None, record: LineageRecord | None = None,
           load_timeout_s: float = LOAD_TIMEOUT_S, headers: dict[str, str] | None = None,
           replicas: Sequence[str] = ()) -> dict[str, Any]:
    """Roll `onnx_path` out as the next version of `model_name` on the Triton at `url`.

    An interrupted earlier deploy of the model is finished first (see `recover`). `record` is the
    file's export record (default: the export report beside it); `headers` (the admin key of a server
    that restricts its repository API; default: the key found for `repository`) go with repository calls only.
    `replicas` are all servers of `repository` (client.replica_urls); each step is then taken on every one.

    Raises:
        ConfigError: a bad model name, or the file changes the serving contract.
        ExportError: the file is unreadable or contradicts its export record.
        ServingError: the server is unreachable, or the new version failed to load or its smoke
            test, in which case the versions that served before still serve (the message says why).
    """
    started = time.monotonic()
    model_dir = Path(repository) / check_model_name(model_name)
    with _deploy_lock(model_dir):
        client = EmbeddingClient(url, model_name, timeout_s=60.0, headers=headers or admin_headers_for(repository),
                                 replicas=replicas)
        recovered = _recover(client, Path(repository), load_timeout_s=load_timeout_s)
        config = read_config(model_dir)
        serving = ready_versions(client)
        missing = [v for v in serving if v not in version_folders(model_dir)]
        if not serving or missing:
            raise ServingError(f"model {model_name!r} on {url} serves versions {serving}, which {model_dir} does not "
                               "hold: deploy needs the live server's own repository and a loaded model")
        contract = served_contract(onnx_path, record=record, **(lineage or {}))
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
            "candidate_smoke": candidate, "smoke": smoke, "lineage": contract.lineage, "recovered": recovered,
            "seconds": round(time.monotonic() - started, 2)}


def recover(repository: str | Path, *, url: str, model_name: str = DEFAULT_MODEL_NAME,
            load_timeout_s: float = LOAD_TIMEOUT_S, headers: dict[str, str] | None = None,
            replicas: Sequence[str] = ()) -> dict[str, Any]:
    """Finish a deploy of `model_name` that was killed: roll it forward or back per its journal, clean up.

    Returns what was done and the versions serving afterwards; a repository with nothing to finish is
    left as it is ("status": "clean").

    Raises:
        ServingError: the server is unreachable, another deploy holds the lock, or the recovered
            state could not be loaded (the journal is kept, so running it again retries).
    """
    model_dir = Path(repository) / check_model_name(model_name)
    with _deploy_lock(model_dir):
        client = EmbeddingClient(url, model_name, timeout_s=60.0, headers=headers or admin_headers_for(repository),
                                 replicas=replicas)
        result = _recover(client, Path(repository), load_timeout_s=load_timeout_s)
    return {"model": model_name, "url": url, "repository": str(repository), **result,
            "serving_versions": ready_versions(client)}


def unfinished(repository: str | Path) -> list[str]:
    """Models of `repository` that an interrupted deploy left something of: a journal, a candidate model,
    or half-written files (what `recover` finishes); [] for a clean repository."""
    repository = Path(repository)
    if not repository.is_dir():
        return []
    models = [p for p in repository.iterdir() if p.is_dir() and (p / CONFIG_FILE).is_file()
              and not p.name.endswith(CANDIDATE_SUFFIX)]
    return sorted(p.name for p in models if (p / JOURNAL_FILE).exists() or
                  (repository / (p.name + CANDIDATE_SUFFIX)).exists() or _temporaries(p))


def recover_repository(repository: str | Path, *, url: str, models: Sequence[str] = ("*",),
                       load_timeout_s: float = LOAD_TIMEOUT_S, headers: dict[str, str] | None = None,
                       replicas: Sequence[str] = ()) -> list[dict[str, Any]]:
    """`recover` every model of `repository` (of `models`, "*" for all) that an interrupted deploy left
    unfinished; what each recovery did.

    Raises:
        ServingError: as `recover` (the first model whose recovery failed; its journal is kept).
    """
    names = [n for n in unfinished(repository) if "*" in models or n in models]
    return [recover(repository, url=url, model_name=name, load_timeout_s=load_timeout_s, headers=headers,
                    replicas=replicas) for name in names]


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
    candidate = EmbeddingClient(client.url, name, timeout_s=client.timeout_s, headers=client.headers,
                                replicas=client.replicas)
    try:
        _load(client, name, load_timeout_s=load_timeout_s)
        PAUSE.at("candidate-loaded")
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
    """Add the candidate-tested file as `version`, switch to it in one reload, smoke-test it pinned; roll back on
    failure. Until the switch the loaded config serves `serving` alone, so no unpinned request reaches `version`.

    Each step is preceded by the journal entry that lets `recover` finish the job if the process is killed.
    """
    config_path = model_dir / CONFIG_FILE
    journal = Journal(model=client.model_name, version=version, serving=list(serving),
                      original_config=config_path.read_text(), final_config=config,
                      onnx_sha256=file_sha256(onnx_path))
    journal.save(model_dir, PROMOTING)
    PAUSE.at("promoting")
    try:
        write_config(model_dir, pinned_config(read_config(model_dir), serving, version))
        write_version(onnx_path, model_dir, version, flavour=flavour)
        PAUSE.at("version-written")
        journal.save(model_dir, PROMOTED)
        PAUSE.at("promoted")
        write_config(model_dir, config)
        PAUSE.at("final-written")
        _load(client, client.model_name, load_timeout_s=load_timeout_s)  # N+1 takes over from N in one reload
        PAUSE.at("final-loaded")
        report = smoke_test(client, str(version), images, reference, tolerance=tolerance)
        if not report.passed:
            raise RolloutError(f"its smoke test inside {client.model_name!r} failed ({report.reason})")
    except BaseException:
        rollback(client, model_dir, journal)
        raise
    Journal.clear(model_dir)
    logger.info("%s version %d is serving; retired %s", client.model_name, version,
                [v for v in serving if v not in ready_versions(client)])
    return report.to_dict()


def pinned_config(config: dict[str, Any], serving: list[int], version: int) -> dict[str, Any]:
    """config.pbtxt while `version` is added: only `serving` load on a restart, and it says a deploy is unfinished."""
    params = config.get("parameters", {}) | {UNFINISHED_KEY: {"string_value": str(version)}}
    return config | {"version_policy": {"specific": {"versions": serving}}, "parameters": params}


def rollback(client: EmbeddingClient, model_dir: Path, journal: Journal) -> None:
    """Remove the new version, restore and reload the previous config, check the old versions serve.

    The journal says `rolling-back` first, so a rollback that is itself killed is finished by `recover`.
    """
    logger.warning("rolling back %s version %d", client.model_name, journal.version)
    journal.save(model_dir, ROLLING_BACK)
    _roll_back(client, model_dir, journal)
    Journal.clear(model_dir)


def _roll_back(client: EmbeddingClient, model_dir: Path, journal: Journal) -> None:
    shutil.rmtree(model_dir / str(journal.version), ignore_errors=True)
    _write_text(model_dir / CONFIG_FILE, journal.original_config)
    client.call("reloading the previous versions", client.raw.load_model, client.model_name)
    back = ready_versions(client)
    if not set(journal.serving) <= set(back) or journal.version in back:
        raise ServingError(f"rollback of {client.model_name!r} left versions {back} ready instead of "
                           f"{journal.serving}")


def _roll_forward(client: EmbeddingClient, model_dir: Path, journal: Journal, *, load_timeout_s: float) -> None:
    write_config(model_dir, journal.final_config)
    try:
        _load(client, client.model_name, load_timeout_s=load_timeout_s)
    except RolloutError as exc:
        raise ServingError(f"finishing the promotion of {client.model_name!r} version {journal.version} failed: "
                           f"{exc}; the journal is kept, run `dino-mlops deploy --recover` again") from None
    back = ready_versions(client)
    if journal.version not in back:
        raise ServingError(f"finishing the promotion of {client.model_name!r} left versions {back} ready instead of "
                           f"[{journal.version}]")


def _recover(client: EmbeddingClient, repository: Path, *, load_timeout_s: float) -> dict[str, Any]:
    """Finish what the journal records, then remove what an interrupted deploy left behind (lock held)."""
    model_dir = repository / client.model_name
    removed = _remove_candidate(client, repository)
    journal = Journal.load(model_dir)
    action = "nothing to recover"
    if journal is not None:
        forward = journal.phase == PROMOTED and _holds(model_dir / str(journal.version), journal.onnx_sha256)
        logger.warning("finishing the deploy of %s version %d (pid %d) that stopped in phase %r: rolling %s",
                       client.model_name, journal.version, journal.pid, journal.phase, "forward" if forward else "back")
        if forward:
            _roll_forward(client, model_dir, journal, load_timeout_s=load_timeout_s)
            action = f"rolled forward to version {journal.version}"
        else:
            untested = model_dir / str(journal.version)
            removed += [str(untested)] if untested.exists() else []
            if journal.phase != ROLLING_BACK:
                journal.save(model_dir, ROLLING_BACK)
            _roll_back(client, model_dir, journal)
            action = f"rolled back to version(s) {journal.serving}"
        Journal.clear(model_dir)
    removed += _remove_temporaries(model_dir)
    status = "recovered" if journal is not None else ("cleaned" if removed else "clean")
    return {"status": status, "action": action, "removed": removed}


def _holds(folder: Path, sha256: str) -> bool:
    """Whether a version folder holds the file with this sha256 (what passed the smoke tests)."""
    path = folder / ONNX_FILE
    return path.is_file() and file_sha256(path) == sha256


def _remove_candidate(client: EmbeddingClient, repository: Path) -> list[str]:
    """Unload and delete `<model>_candidate`, left by a deploy killed while testing its candidate."""
    name = client.model_name + CANDIDATE_SUFFIX
    folder = repository / name
    index = client.call("reading the repository index", client.raw.get_model_repository_index, as_json=True)
    if any(m.get("name") == name and m.get("state") in ("READY", "LOADING") for m in index.get("models", [])):
        client.call("unloading the candidate", client.raw.unload_model, name)
    if not folder.exists():
        return []
    shutil.rmtree(folder)
    return [str(folder)]


def _temporaries(model_dir: Path) -> list[Path]:
    """Hidden half-written version folders and config/journal files (never seen by Triton) left by a kill."""
    return [path for path in model_dir.iterdir()
            if (path.is_dir() and path.name.startswith(".") and path.name[1:].split(".")[0].isdigit())
            or (path.is_file() and path.name.startswith((f".{CONFIG_FILE}.", f"{JOURNAL_FILE}.")))]


def _remove_temporaries(model_dir: Path) -> list[str]:
    removed = []
    for path in _temporaries(model_dir):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
        removed.append(str(path))
    return removed


def _write_text(path: Path, text: str) -> None:
    """Replace a file atomically with `text` (the previous config.pbtxt, as it was)."""
    atomic.write_text(path, text, mode=0o644)


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
    try:
        with locks.exclusive(model_dir):
            yield
    except locks.LockBusyError:
        raise ServingError(f"another deploy of {model_dir} is running; wait for it to finish") from None
