"""Lineage of an exported model: which data, which code, and how well it scored.

Recorded at export time in the ONNX metadata and copied into the Triton config's parameters, so a
served model answers "where did you come from" without access to the training run: the DVC md5 of
the data (stored in every checkpoint), the code revision (`git rev-parse HEAD`, or
DINO_CODE_REVISION in images built without .git), and the metrics of the evaluation reports
(the `metrics` map of the shared metrics-JSON envelope, dino_model/eval/report.py).

Metadata inside a file is whatever the file says, and the quality gate takes the served model's
`metrics` as the bar a new model must reach, so lineage is only served as *verified* when it is
bound to the exact model bytes by a record the export itself wrote and signed: the sha256 of each
exported file, its lineage, and an Ed25519 signature over both made with the export's private key
(`LineageRecord`, dino_model/export/signing.py). `dino-mlops export` writes that record into its
report beside the file (`<stem>.export.json`); the pipeline's export step also puts it into the
output artifact's metadata, and its deploy step checks the file against that copy. Every path that
writes lineage into a Triton config (`triton-repo`, `deploy`, the pipeline's release) checks the file:

- a record whose sha256 or lineage differs from the file's: refused, naming the file (edited after export);
- no record (a file from elsewhere), a record without a signature, or one whose signature no trusted
  public key verifies (a forged record, or one copied from another file: the signature covers the
  sha256 and the lineage), or lineage overridden on the command line: served, but the lineage
  carries no `lineage_verified` mark, and the gate does not read a bar from it;
- a matching record signed by a trusted key: served with `lineage_verified` naming the record, and
  with the signature and its key id in the config, where the gate checks it again.

Why a signature and not only a digest: whoever can rewrite the file can rewrite a digest beside it
too, but cannot sign without the private key, which only the export holds (a Secret in the cluster).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from dino_model.errors import ExportError
from dino_model.export import signing
from dino_model.export.signing import Signature
from dino_model.runtime import git
from dino_model.runtime.git import GitError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from dino_model.runtime.digests import file_sha256

logger = logging.getLogger(__name__)

REVISION_ENV = "DINO_CODE_REVISION"
VERIFIED_KEY = "lineage_verified"  # config parameter: the record that vouched for the lineage ("" = none)
SIGNATURE_KEY = "lineage_signature"  # config parameter: the export's signature (base64) of sha256 + lineage
KEY_ID_KEY = "lineage_key_id"  # config parameter: the id of the key that made it
# what export binds to the bytes; the weights a run started from (train.init_weights) only when it had some
INIT_KEYS = ("init_weights", "init_sha256")
RECORDED_KEYS = ("data_version", "data_revision", "code_revision", "metrics", "checkpoint", *INIT_KEYS)


@dataclass(frozen=True)
class LineageRecord:
    """What the export recorded about one file: its sha256, its lineage, and where the record is kept."""

    sha256: str
    lineage: dict[str, str] = field(default_factory=dict)
    source: str = ""
    signature: Signature | None = None

    def to_metadata(self) -> dict[str, object]:
        """The record as KFP artifact metadata (kept in the pipeline's metadata store)."""
        signed = {"signature": self.signature.to_dict()} if self.signature is not None else {}
        return {"sha256": self.sha256, "lineage": dict(self.lineage), **signed}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, object], *, source: str) -> LineageRecord | None:
        """The record in an artifact's metadata, or None when the artifact carries none."""
        sha256 = metadata.get("sha256")
        lineage = metadata.get("lineage")
        if not isinstance(sha256, str) or not sha256:
            return None
        lineage = {str(k): str(v) for k, v in lineage.items()} if isinstance(lineage, Mapping) else {}
        return cls(sha256=sha256, lineage=lineage, source=source,
                   signature=Signature.from_dict(metadata.get("signature")))

    def signed_by(self, trusted: Sequence[Ed25519PublicKey]) -> str | None:
        """The id of the trusted key whose signature binds this sha256 to this lineage, else None."""
        return signing.verify(self.signature, self.sha256, self.lineage, trusted)


def signed_record(sha256: str, lineage: Mapping[str, str], key: signing.Ed25519PrivateKey, *,
                  source: str = "") -> LineageRecord:
    """The export's record of one file, signed with `key` (see dino_model/export/signing.py)."""
    lineage = {k: str(v) for k, v in lineage.items()}
    return LineageRecord(sha256=sha256, lineage=lineage, source=source, signature=signing.sign(key, sha256, lineage))


def verified_lineage(params: Mapping[str, str], trusted: Sequence[Ed25519PublicKey] | None = None
                     ) -> dict[str, str] | None:
    """The lineage in a served config's string parameters when serving verified it, else None.

    Verified means marked `lineage_verified` at deploy and signed, over `onnx_sha256` and the
    lineage, by one of the `trusted` public keys (default: signing.trusted_keys()), so a config
    edited by hand to claim other metrics is not read. What the quality gate and anything else that
    acts on a served model's lineage should read.
    """
    if not params.get(VERIFIED_KEY):
        return None
    signature = Signature(value=params.get(SIGNATURE_KEY, ""), key_id=params.get(KEY_ID_KEY, ""))
    keys = signing.trusted_keys() if trusted is None else trusted
    if not signature.value or signing.verify(signature, params.get("onnx_sha256", ""), params, keys) is None:
        logger.warning("served lineage %s carries no signature that a trusted key verifies (%d trusted; see $%s): "
                       "it is not taken as verified", params.get(VERIFIED_KEY), len(keys), signing.PUBLIC_KEYS_ENV)
        return None
    return {k: params[k] for k in (*RECORDED_KEYS, "onnx_sha256", VERIFIED_KEY, KEY_ID_KEY) if k in params}


def report_path(onnx_path: str | Path) -> Path:
    """Where `dino-mlops export` writes the report of a file: `<stem>.export.json` (also for `<stem>.fp16.onnx`)."""
    path = Path(onnx_path)
    stem = path.name.removesuffix(".onnx").removesuffix(".fp16")
    return path.with_name(f"{stem}.export.json")


def find_record(onnx_path: str | Path) -> LineageRecord | None:
    """The export record of a file from the export report beside it, or None when there is none.

    Raises:
        ExportError: the report exists but cannot be read.
    """
    path, report = Path(onnx_path), report_path(onnx_path)
    if not report.is_file():
        return None
    try:
        details = json.loads(report.read_text()).get("details", {})
        files = details.get("files", {})
    except (OSError, ValueError, AttributeError) as exc:
        raise ExportError(f"cannot read the export record {report} of {path}: {exc}") from exc
    entry = next((f for f in files.values() if isinstance(f, dict) and Path(str(f.get("path", ""))).name == path.name),
                 None)
    if entry is None or not entry.get("sha256"):
        return None
    lineage = details.get("lineage")
    if not isinstance(lineage, dict):  # reports written before the record had its own key
        contract = details.get("contract", {})
        lineage = {k: contract[k] for k in RECORDED_KEYS if k in contract}
    return LineageRecord(sha256=str(entry["sha256"]), lineage={str(k): str(v) for k, v in lineage.items()},
                         source=str(report), signature=Signature.from_dict(entry.get("signature")))


def verify_record(onnx_path: str | Path, record: LineageRecord, lineage: Mapping[str, str], *,
                  sha256: str | None = None) -> None:
    """ExportError unless the file's bytes and its recorded lineage are what the export wrote.

    `lineage` is what the file's metadata says; the record must agree on every key it holds.
    `sha256` is the file's digest when the caller has it already.
    """
    actual = sha256 or file_sha256(onnx_path)
    if actual != record.sha256:
        raise ExportError(f"{onnx_path} does not match its export record {record.source} (sha256 {actual[:16]}... "
                          f"!= recorded {record.sha256[:16]}...): the file changed after export, so its lineage "
                          "cannot be trusted; re-export it with `dino-mlops export`")
    differ = sorted(k for k in RECORDED_KEYS if k in record.lineage and record.lineage[k] != lineage.get(k, ""))
    if differ:
        raise ExportError(f"{onnx_path} and its export record {record.source} disagree on {', '.join(differ)}; "
                          "re-export it with `dino-mlops export`")


def code_revision() -> str:
    """The git commit of this code, or DINO_CODE_REVISION, or "" when neither is known."""
    if os.environ.get(REVISION_ENV):
        return os.environ[REVISION_ENV]
    try:
        out = git.run(["rev-parse", "HEAD"], cwd=Path(__file__).parent, timeout_s=10, check=False)
    except (OSError, GitError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def read_metrics(paths: Sequence[str | Path]) -> dict[str, float]:
    """The merged `metrics` maps of metrics-JSON reports (later files win on equal names)."""
    merged: dict[str, float] = {}
    for path in map(Path, paths):
        try:
            report = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ExportError(f"cannot read metrics report {path}: {exc}") from exc
        metrics = report.get("metrics") if isinstance(report, dict) else None
        if not isinstance(metrics, dict):
            raise ExportError(f"{path} is not a metrics report: it has no `metrics` map (see docs/evaluation.md)")
        merged |= {str(k): float(v) for k, v in metrics.items()}
    return merged


def default_metric_reports(checkpoint: str | Path) -> list[Path]:
    """Evaluation reports written beside a checkpoint (`<run>/eval/*.json`), if any."""
    folder = Path(checkpoint).parent / "eval"
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def build_lineage(
    *, data_version: str = "", data_revision: str = "", metrics: dict[str, float] | None = None,
    checkpoint: str | Path = "", init: Mapping[str, object] | None = None
) -> dict[str, str]:
    """String-valued lineage record; metrics as one JSON object. `init` is a checkpoint's record of the weights
    the run started from (dino_model/train/resume.py): its path and sha256 join the record when present."""
    lineage = {
        "data_version": data_version,
        "data_revision": data_revision,
        "code_revision": code_revision(),
        "metrics": json.dumps(metrics or {}, sort_keys=True),
        "checkpoint": str(checkpoint),
    }
    if init and init.get("sha256"):
        lineage |= {"init_weights": str(init.get("path", "")), "init_sha256": str(init["sha256"])}
    if not data_version:
        logger.warning("no data version known for %s: the lineage records none", checkpoint or "model")
    return lineage
