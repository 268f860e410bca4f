"""A standard Triton model repository on disk: `<repo>/<model>/config.pbtxt` and integer version folders.

Each version folder holds the self-contained `model.onnx` (and, for the `cpu` flavour, the Python
backend's `model.py`). Folders are written under a hidden name and renamed into place, so a server
never sees half a version (Triton ignores names that are not positive integers).
The config's parameters carry the contract and the lineage of the model being written; the
lineage is marked verified only when the file matches its export record and a trusted key signed
that record (dino_model/export/lineage.py, signing.py), and a file that contradicts its record is
refused. Model names and versions are checked before any path is built from them
(triton_config.check_model_name / check_version).
The export's drift reference (`<stem>.drift.npz` beside the file) is copied in as `drift.npz` when
present: the drift step of the entry points reads the served version's. The export's teacher backbone
(`<stem>.safetensors` beside the file) is copied in as `backbone.safetensors` when present: Triton
ignores it, and a retraining that starts from the served model (the pipeline's `init_from_serving`)
reads it from there, so the weights a version serves stay with that version.

Beside the model, `write_entry_points` writes the ensembles of ensemble.py and their steps, each as
version 1 with the files its stub runs (python_backend/*.py, renamed `model.py` where Triton expects
it), so the repository is self-contained: nothing served imports the project. They follow the
model's contract, which a deploy never changes, so a deploy leaves them alone; rewriting the
repository replaces their version folder in one rename.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from dino_model.errors import ConfigError
from dino_model.export import signing
from dino_model.export.contract import ModelContract
from dino_model.export.lineage import (
    KEY_ID_KEY,
    SIGNATURE_KEY,
    VERIFIED_KEY,
    LineageRecord,
    file_sha256,
    find_record,
    verify_record,
)
from dino_model.export.onnx import read_contract
from dino_model.monitoring.drift import drift_path
from dino_model.runtime import atomic
from dino_model.triton import ensemble
from dino_model.triton.config import (
    RepositoryOptions,
    build_model_config,
    check_model_name,
    check_version,
    config_to_text,
    parse_config_text,
)

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.pbtxt"
ONNX_FILE = "model.onnx"
DRIFT_FILE = "drift.npz"
WEIGHTS_FILE = "backbone.safetensors"
BACKEND_FILES = Path(__file__).parent / "python_backend"
PYTHON_MODEL = BACKEND_FILES / "model.py"
PREPROCESS_MODEL = BACKEND_FILES / "preprocess_model.py"
DRIFT_MODEL = BACKEND_FILES / "drift_model.py"
# the files of each step's version folder: {name in the folder: source}
SHARED_FILES = {name: BACKEND_FILES / name for name in ("versions.py", "capture_hook.py", "drift_share.py")}
PREPROCESS_FILES = {"model.py": PREPROCESS_MODEL, "preprocessing.py": BACKEND_FILES / "preprocessing.py",
                    **SHARED_FILES}
DRIFT_FILES = {"model.py": DRIFT_MODEL, **SHARED_FILES}
UNPACK_FILES = {"model.py": BACKEND_FILES / "unpack_model.py", "preprocessing.py": BACKEND_FILES / "preprocessing.py",
                **SHARED_FILES}


def version_folders(model_dir: str | Path) -> list[int]:
    """The version numbers present in a model folder, ascending (Triton's rule: positive integers)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and p.name[0] != "0")


def next_version(model_dir: str | Path) -> int:
    return max(version_folders(model_dir), default=0) + 1


def write_version(onnx_path: str | Path, model_dir: str | Path, version: int, *, flavour: str) -> Path:
    """Copy the model files into `<model_dir>/<version>/`, atomically; refuses to overwrite."""
    model_dir, onnx_path = Path(model_dir), Path(onnx_path)
    target = model_dir / str(check_version(version))
    if target.exists():
        raise ConfigError(f"{target} already exists; versions are immutable, so omit --version to add "
                          f"version {next_version(model_dir)}")
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=model_dir))
    try:
        shutil.copyfile(onnx_path, staging / ONNX_FILE)
        if drift_path(onnx_path).is_file():
            shutil.copyfile(drift_path(onnx_path), staging / DRIFT_FILE)
        if weights_path(onnx_path).is_file():
            shutil.copyfile(weights_path(onnx_path), staging / WEIGHTS_FILE)
        if flavour == "cpu":
            shutil.copyfile(PYTHON_MODEL, staging / PYTHON_MODEL.name)
        staging.chmod(0o755)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def weights_path(onnx_path: str | Path) -> Path:
    """Where an export puts the teacher backbone beside `<stem>.onnx`: `<stem>.safetensors`."""
    return Path(onnx_path).with_suffix(".safetensors")


def write_config(model_dir: str | Path, config: dict[str, Any]) -> Path:
    """Write config.pbtxt atomically (validated against Triton's schema first)."""
    path = Path(model_dir) / CONFIG_FILE
    text = config_to_text(config)
    return atomic.write_text(path, text, mode=0o644)


def read_config(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{path} does not exist; write the repository with `dino-mlops triton-repo` first")
    return parse_config_text(path.read_text(), source=str(path))


def served_contract(onnx_path: str | Path, *, record: LineageRecord | None = None, **lineage: str) -> ModelContract:
    """The ONNX file's contract with lineage overrides and the file's sha256 added.

    The lineage is marked verified (`lineage_verified` names the record, `lineage_signature` and
    `lineage_key_id` carry the export's signature) only when the file matches `record` (default:
    the export report beside the file), a trusted public key verifies the record's signature
    (signing.trusted_keys) and no override changes it; whatever the file's own metadata says about
    verification is dropped.

    Raises:
        ExportError: the file is not a readable export, or it contradicts its export record.
        ConfigError: a configured public key is unreadable.
    """
    contract, digest = read_contract(onnx_path), file_sha256(onnx_path)
    record = record if record is not None else find_record(onnx_path)
    if record is not None:
        verify_record(onnx_path, record, contract.lineage, sha256=digest)
    overridden = sorted(k for k, v in lineage.items() if v and v != contract.lineage.get(k, ""))
    signed_by = _signed_by(onnx_path, record) if record is not None and not overridden else None
    if record is None:
        logger.warning("%s has no export record: its lineage is served unverified, and the quality gate will not "
                       "compare against it", onnx_path)
    elif overridden:
        logger.warning("lineage %s of %s overridden by hand: served unverified, and the quality gate will not "
                       "compare against it", ", ".join(overridden), onnx_path)
    contract = contract.with_lineage(**lineage, onnx_sha256=digest)
    kept = {k: v for k, v in contract.lineage.items() if k not in (VERIFIED_KEY, SIGNATURE_KEY, KEY_ID_KEY)}
    if signed_by is None or record is None or record.signature is None:
        return replace(contract, lineage=kept)
    return replace(contract, lineage=kept | {VERIFIED_KEY: record.source, SIGNATURE_KEY: record.signature.value,
                                             KEY_ID_KEY: signed_by})


def _signed_by(onnx_path: str | Path, record: LineageRecord) -> str | None:
    """The id of the trusted key that signed `record`, or None (with the reason logged)."""
    trusted = signing.trusted_keys()
    signed_by = record.signed_by(trusted)
    if signed_by is not None:
        return signed_by
    if record.signature is None:
        why = "is not signed (written before lineage was signed, or by hand)"
    elif not trusted:
        why = f"is signed, but no public key is trusted here (set ${signing.PUBLIC_KEYS_ENV})"
    else:
        why = (f"carries a signature (key id {record.signature.key_id or '?'}) that none of the {len(trusted)} "
               "trusted public key(s) verifies for this file and lineage: forged, or copied from another file")
    logger.warning("the export record %s of %s %s: its lineage is served unverified, and the quality gate will not "
                   "compare against it", record.source, onnx_path, why)
    return None


def write_model_repository(onnx_path: str | Path, repository: str | Path, opts: RepositoryOptions, *,
                           version: int | None = None, lineage: dict[str, str] | None = None,
                           record: LineageRecord | None = None) -> dict[str, Any]:
    """Add a version of the exported model to a repository and (re)write its config.pbtxt.

    Args:
        onnx_path: the file written by `dino-mlops export` (its metadata carries the contract).
        repository: the model repository root; created when missing.
        opts: flavour, batching, instances, accelerator, warm-up and version policy.
        version: the version folder to write (default: one above the highest present).
        lineage: overrides of the recorded lineage (data_version, code_revision, metrics JSON); an
            override that changes it leaves the served lineage unverified.
        record: the file's export record (default: the export report beside it).

    Returns:
        {"repository", "model", "version", "flavour", "config", "version_dir", "lineage_verified"}.

    Raises:
        ConfigError: a bad model name, version or option. ExportError: the file contradicts its record.
    """
    onnx_path = Path(onnx_path)
    opts.validate()
    if version is not None:
        version = check_version(version)
    contract = served_contract(onnx_path, record=record, **(lineage or {}))
    if opts.flavour == "gpu" and contract.precision == "fp16":
        logger.info("%s computes in fp16 inside; inputs and outputs stay FP32", onnx_path)
    config = build_model_config(contract, opts)
    model_dir = Path(repository) / check_model_name(opts.model_name)
    version = version or next_version(model_dir)
    version_dir = write_version(onnx_path, model_dir, version, flavour=opts.flavour)
    config_path = write_config(model_dir, config)
    entry_points = write_entry_points(repository, contract, opts) if opts.entry_points else []
    logger.info("wrote %s version %d (%s flavour) under %s", opts.model_name, version, opts.flavour, repository)
    return {"repository": str(repository), "model": opts.model_name, "version": version, "flavour": opts.flavour,
            "config": str(config_path), "version_dir": str(version_dir),
            "lineage_verified": contract.lineage.get(VERIFIED_KEY, ""), "entry_points": entry_points}


def write_entry_points(repository: str | Path, contract: ModelContract, opts: RepositoryOptions) -> list[str]:
    """Write the preprocessing and drift steps and the ensembles of ensemble.py beside `opts.model_name`.

    Returns the model names written, in the order to load them.
    """
    repository = Path(repository)
    dali = ensemble.uses_dali(opts)
    with tempfile.TemporaryDirectory(prefix="dino-dali-") as scratch:
        if dali:
            from dino_model.triton.dali import DALI_FILE, serialize_pipeline

            preprocess = [(ensemble.unpack_config(opts), UNPACK_FILES),
                          (ensemble.dali_preprocess_config(contract, opts),
                           {DALI_FILE: serialize_pipeline(contract, Path(scratch) / DALI_FILE,
                                                          max_batch_size=opts.max_batch_size)})]
        else:
            shutil.rmtree(repository / ensemble.EntryPoints(opts.model_name).unpack, ignore_errors=True)
            preprocess = [(ensemble.preprocess_config(contract, opts), PREPROCESS_FILES)]
        steps = [*preprocess, (ensemble.drift_config(contract, opts), DRIFT_FILES),
                 (ensemble.images_config(contract, opts, dali=dali), {}),
                 (ensemble.monitored_config(contract, opts), {})]
        for config, files in steps:
            model_dir = repository / config["name"]
            replace_version_one(model_dir, files)
            write_config(model_dir, config)
    logger.info("wrote the entry points of %s (image preprocessing: %s)", opts.model_name,
                "DALI" if dali else "Python step")
    return [config["name"] for config, _ in steps]


def replace_version_one(model_dir: Path, files: dict[str, Path]) -> Path:
    """`<model_dir>/1/` holding `files` ({name: source}), swapped in by renames (an ensemble's is empty)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    target = model_dir / "1"
    staging = Path(tempfile.mkdtemp(prefix=".1.", dir=model_dir))
    try:
        for name, source in files.items():
            shutil.copyfile(source, staging / name)
        staging.chmod(0o755)
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=".1.", dir=model_dir))
            target.rename(retired / "1")
            staging.rename(target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target

