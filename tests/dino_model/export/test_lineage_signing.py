"""Signed lineage: only a record signed by a trusted key makes a served model's lineage verified.

Someone who can write a folder can write a forged file *and* a forged export report beside it, with
the forged file's sha256: before signing, that was served as verified and its claimed 99.9 % set the
quality gate's bar. These tests forge, copy and strip records, and check the keys' rules (where they
come from, file modes, rotation), on the CPU without a server.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dino_model.errors import ConfigError
from dino_model.export import signing
from dino_model.export.lineage import KEY_ID_KEY, SIGNATURE_KEY, VERIFIED_KEY, file_sha256, find_record
from dino_model.serving.gate import config_lineage, verified_score
from dino_model.triton.config import RepositoryOptions, config_parameters
from dino_model.triton.repository import read_config, write_model_repository

CLAIMS = {"metrics": json.dumps({"knn_top1": 99.9}), "data_version": "forged.dir"}


def _rewrite_report(onnx_path: Path, **lineage: str) -> dict:
    """The export report beside `onnx_path` rewritten to record the file's current sha256 and `lineage`."""
    report_path = onnx_path.with_suffix(".export.json")
    report = json.loads(report_path.read_text())
    report["details"]["files"]["fp32"]["sha256"] = file_sha256(onnx_path)
    report["details"]["lineage"] |= lineage
    report_path.write_text(json.dumps(report))
    return report


def _serve(onnx_path: Path, root: Path) -> dict:
    write_model_repository(onnx_path, root, RepositoryOptions(flavour="cpu"))
    return read_config(root / "dino")


def _pem(key: Ed25519PrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def test_the_export_signs_each_file_with_a_private_local_key(tiny_onnx: Path, tiny_onnx_fp16: Path) -> None:
    private = signing.config_dir() / signing.PRIVATE_FILE
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    trusted = signing.trusted_keys()
    for path in (tiny_onnx, tiny_onnx_fp16):
        record = find_record(path)
        assert record is not None and record.signature is not None
        assert record.signed_by(trusted) == record.signature.key_id == signing.key_id(trusted[0])


def test_a_genuine_export_is_verified_and_the_gate_checks_its_signature(tiny_onnx: Path, tmp_path: Path,
                                                                         exported_copy) -> None:
    config = _serve(exported_copy(tiny_onnx, tmp_path / "artifact"), tmp_path / "repo")
    params = config_parameters(config)
    assert params[VERIFIED_KEY] and params[SIGNATURE_KEY] and params[KEY_ID_KEY]
    recorded = json.loads(find_record(tiny_onnx).lineage["metrics"])["knn_top1"]
    assert verified_score(config, "knn_top1") == pytest.approx(recorded)


def test_a_forged_file_with_a_forged_record_beside_it_is_served_unverified(tiny_onnx: Path, tmp_path: Path,
                                                                           exported_copy, forge) -> None:
    forged = forge(tiny_onnx, exported_copy(tiny_onnx, tmp_path / "artifact"), **CLAIMS)
    report = _rewrite_report(forged, **CLAIMS)
    del report  # the signature is the genuine file's, over other bytes and other metrics
    config = _serve(forged, tmp_path / "repo")
    assert VERIFIED_KEY not in config_parameters(config)
    assert verified_score(config, "knn_top1") is None  # not 99.9


def test_an_unsigned_record_is_served_unverified(tiny_onnx: Path, tmp_path: Path, exported_copy, forge) -> None:
    forged = forge(tiny_onnx, exported_copy(tiny_onnx, tmp_path / "artifact"), **CLAIMS)
    report = _rewrite_report(forged, **CLAIMS)
    del report["details"]["files"]["fp32"]["signature"]
    forged.with_suffix(".export.json").write_text(json.dumps(report))
    config = _serve(forged, tmp_path / "repo")
    assert VERIFIED_KEY not in config_parameters(config) and verified_score(config, "knn_top1") is None


def test_a_record_signed_by_an_untrusted_key_is_served_unverified(tiny_onnx: Path, tmp_path: Path, exported_copy,
                                                                  forge, monkeypatch) -> None:
    """The forger signs with a key of their own: the verifier trusts only the export's public key."""
    forged = forge(tiny_onnx, exported_copy(tiny_onnx, tmp_path / "artifact"), **CLAIMS)
    report = _rewrite_report(forged, **CLAIMS)
    theirs = Ed25519PrivateKey.generate()
    lineage = report["details"]["lineage"]
    report["details"]["files"]["fp32"]["signature"] = signing.sign(theirs, file_sha256(forged), lineage).to_dict()
    forged.with_suffix(".export.json").write_text(json.dumps(report))
    config = _serve(forged, tmp_path / "repo")
    assert VERIFIED_KEY not in config_parameters(config)
    # and the same record is verified where their key is trusted: the signature itself is sound
    monkeypatch.setenv(signing.PUBLIC_KEYS_ENV, signing.public_pem(theirs.public_key()).decode())
    assert find_record(forged).signed_by(signing.trusted_keys()) == signing.key_id(theirs.public_key())


def test_a_served_config_edited_to_claim_more_is_not_read(tiny_onnx: Path, tmp_path: Path, exported_copy) -> None:
    """The gate checks the signature in the config itself: editing config.pbtxt's metrics breaks it."""
    config = _serve(exported_copy(tiny_onnx, tmp_path / "artifact"), tmp_path / "repo")
    config["parameters"]["metrics"] = {"string_value": CLAIMS["metrics"]}
    assert config_lineage(config) is None and verified_score(config, "knn_top1") is None
    stripped = {k: v for k, v in config["parameters"].items() if k not in (SIGNATURE_KEY, KEY_ID_KEY)}
    assert config_lineage(config | {"parameters": stripped}) is None


def test_rotation_trusts_every_listed_public_key(tmp_path: Path, monkeypatch) -> None:
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    signature = signing.sign(new, "ab" * 32, {"metrics": "{}"})
    files = []
    for name, key in (("old.pem", old), ("new.pem", new)):
        files.append(tmp_path / name)
        files[-1].write_bytes(signing.public_pem(key.public_key()))
    monkeypatch.setenv(signing.PUBLIC_KEYS_ENV, os.pathsep.join(map(str, files)))
    assert signing.verify(signature, "ab" * 32, {"metrics": "{}"}, signing.trusted_keys()) == signature.key_id
    monkeypatch.setenv(signing.PUBLIC_KEYS_ENV, "\n".join(p.read_text() for p in files))  # the Secret's PEM text
    assert len(signing.trusted_keys()) == 2
    assert signing.verify(signature, "cd" * 32, {"metrics": "{}"}, signing.trusted_keys()) is None  # another file
    assert signing.verify(signature, "ab" * 32, {"metrics": "{\"a\": 1}"}, signing.trusted_keys()) is None


def test_the_signing_key_comes_from_the_secret_as_text_or_path(tmp_path: Path, monkeypatch) -> None:
    key = Ed25519PrivateKey.generate()
    monkeypatch.setenv(signing.SIGNING_KEY_ENV, _pem(key))
    assert signing.key_id(signing.signing_key().public_key()) == signing.key_id(key.public_key())
    assert signing.key_id(signing.trusted_keys()[0]) == signing.key_id(key.public_key())
    path = tmp_path / "key.pem"
    path.write_text(_pem(key))
    path.chmod(0o600)
    monkeypatch.setenv(signing.SIGNING_KEY_ENV, str(path))
    assert signing.key_id(signing.signing_key().public_key()) == signing.key_id(key.public_key())


def test_a_key_file_readable_by_others_is_refused(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "key.pem"
    path.write_text(_pem(Ed25519PrivateKey.generate()))
    path.chmod(0o644)
    monkeypatch.setenv(signing.SIGNING_KEY_ENV, str(path))
    with pytest.raises(ConfigError, match=rf"lineage signing key {path} is open to other users \(mode 644\); "
                                          rf"run `chmod 600 {path}`"):
        signing.signing_key()
    assert path.read_text().startswith("-----BEGIN PRIVATE KEY")  # nothing lost


@pytest.mark.parametrize("value,message", [
    ("-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n", "is not an unencrypted PEM private key"),
    ("ec", r"holds a key of type \w+, not an Ed25519 key"),
])
def test_a_bad_signing_key_is_named(value: str, message: str, monkeypatch) -> None:
    if value == "ec":
        ec = generate_private_key(SECP256R1())
        value = ec.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode()
    monkeypatch.setenv(signing.SIGNING_KEY_ENV, value)
    with pytest.raises(ConfigError, match=rf"\${signing.SIGNING_KEY_ENV} {message}"):
        signing.signing_key()


def test_a_missing_public_key_file_is_named(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(signing.PUBLIC_KEYS_ENV, str(tmp_path / "absent.pem"))
    with pytest.raises(ConfigError, match=rf"cannot read the lineage public key {tmp_path / 'absent.pem'}"):
        signing.trusted_keys()


def test_a_local_key_is_generated_once_private_and_trusted_here(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(signing.CONFIG_HOME_ENV, str(tmp_path / "home"))
    assert signing.trusted_keys() == []  # nothing exported here yet: nothing trusted
    with pytest.raises(ConfigError, match="no lineage signing key"):
        signing.signing_key(create=False)
    first = signing.signing_key()
    folder = tmp_path / "home" / "dino-mlops"
    assert stat.S_IMODE((folder / signing.PRIVATE_FILE).stat().st_mode) == 0o600
    assert signing.key_id(signing.signing_key().public_key()) == signing.key_id(first.public_key())  # not replaced
    assert [signing.key_id(k) for k in signing.trusted_keys()] == [signing.key_id(first.public_key())]


def test_the_initial_weights_are_signed_when_recorded_and_older_records_verify_unchanged() -> None:
    from dino_model.export.lineage import build_lineage

    key = Ed25519PrivateKey.generate()
    plain = build_lineage(data_version="d" * 32 + ".dir", checkpoint="run/checkpoint.pth")
    assert "init_weights" not in plain and signing.payload("0" * 64, plain) == signing.payload(
        "0" * 64, {**plain, "init_weights": "", "init_sha256": ""})  # records made before the keys existed
    started = build_lineage(data_version="d" * 32 + ".dir", checkpoint="run/checkpoint.pth",
                            init={"path": "/models/repository/dino/3/backbone.safetensors", "sha256": "a" * 64})
    assert started["init_sha256"] == "a" * 64 and started["init_weights"].endswith("3/backbone.safetensors")
    signature = signing.sign(key, "0" * 64, started)
    assert signing.verify(signature, "0" * 64, started, [key.public_key()]) is not None
    forged = {**started, "init_sha256": "b" * 64}
    assert signing.verify(signature, "0" * 64, forged, [key.public_key()]) is None
