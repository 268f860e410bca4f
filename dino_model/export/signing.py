"""Signed lineage: the export signs what it recorded about a file; serving and the gate check the signature.

A digest beside the file proves nothing against someone who can write both the file and the report
beside it: they recompute the digest. A signature does, because it needs a private key that only
the export holds. The export signs, with Ed25519 (the `cryptography` package), the file's sha256
together with its recorded lineage (data version and revision, code revision, metrics, checkpoint),
so a signature copied from another file, or kept while a metric is changed, does not verify.

Where the keys live (first found wins):

- private key (export): $DINO_LINEAGE_SIGNING_KEY, holding the PEM itself (how a Kubernetes Secret
  arrives as a variable) or the path of a PEM file; else the local key
  `<config dir>/dino-mlops/lineage-signing.pem` (`$XDG_CONFIG_HOME`, default `~/.config`),
  generated with mode 0600 on the first export that finds none. A key file that other users may
  read is refused: a readable key lets anyone sign.
- public keys (deploy, gate): $DINO_LINEAGE_PUBLIC_KEYS, holding PEM text (one or several keys) or
  paths of PEM files separated by `:`, all trusted (key rotation: trust the old and the new key
  until nothing served is signed by the old one); else the public key of $DINO_LINEAGE_SIGNING_KEY;
  else the local `lineage-signing.pub.pem` beside the local private key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dino_model.errors import ConfigError
from dino_model.runtime import atomic

if TYPE_CHECKING:  # imported where used: the client-only install reads lineage without `cryptography`
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

logger = logging.getLogger(__name__)

SIGNING_KEY_ENV = "DINO_LINEAGE_SIGNING_KEY"
PUBLIC_KEYS_ENV = "DINO_LINEAGE_PUBLIC_KEYS"
CONFIG_HOME_ENV = "XDG_CONFIG_HOME"
PRIVATE_FILE = "lineage-signing.pem"
PUBLIC_FILE = "lineage-signing.pub.pem"
ALGORITHM = "ed25519"
# what the signature covers is this purpose, the file's sha256 and these lineage keys (lineage.RECORDED_KEYS)
PURPOSE = "dino-mlops lineage v1"
SIGNED_KEYS = ("data_version", "data_revision", "code_revision", "metrics", "checkpoint")
# signed only when present, so that records made before they existed verify unchanged
OPTIONAL_SIGNED_KEYS = ("init_weights", "init_sha256")
_PEM_MARK = "-----BEGIN"


@dataclass(frozen=True)
class Signature:
    """An Ed25519 signature of one file's lineage, and the id of the key that made it."""

    value: str  # base64
    key_id: str

    def to_dict(self) -> dict[str, str]:
        return {"algorithm": ALGORITHM, "key_id": self.key_id, "value": self.value}

    @classmethod
    def from_dict(cls, data: object) -> Signature | None:
        """The signature in a report or metadata entry, or None when there is none (or not Ed25519)."""
        if not isinstance(data, Mapping) or data.get("algorithm", ALGORITHM) != ALGORITHM:
            return None
        value, key_id = data.get("value"), data.get("key_id", "")
        return cls(value=value, key_id=str(key_id)) if isinstance(value, str) and value else None


def config_dir() -> Path:
    """`$XDG_CONFIG_HOME/dino-mlops` (default `~/.config/dino-mlops`): where the local keys live."""
    return Path(os.environ.get(CONFIG_HOME_ENV) or Path.home() / ".config") / "dino-mlops"


def payload(sha256: str, lineage: Mapping[str, str]) -> bytes:
    """The bytes signed for a file: purpose, sha256 and the recorded lineage, as canonical JSON."""
    signed = {k: str(lineage.get(k, "")) for k in SIGNED_KEYS}
    signed |= {k: str(lineage[k]) for k in OPTIONAL_SIGNED_KEYS if lineage.get(k)}
    body = {"purpose": PURPOSE, "sha256": sha256, "lineage": signed}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def key_id(public: Ed25519PublicKey) -> str:
    """A short fingerprint of a public key: the first 16 hex digits of the sha256 of its raw bytes."""
    from cryptography.hazmat.primitives import serialization

    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(private: Ed25519PrivateKey, sha256: str, lineage: Mapping[str, str]) -> Signature:
    value = base64.b64encode(private.sign(payload(sha256, lineage))).decode()
    return Signature(value=value, key_id=key_id(private.public_key()))


def verify(signature: Signature | None, sha256: str, lineage: Mapping[str, str],
           trusted: Sequence[Ed25519PublicKey]) -> str | None:
    """The id of the trusted key under which `signature` signs this sha256 and lineage, else None."""
    from cryptography.exceptions import InvalidSignature

    if signature is None:
        return None
    try:
        raw = base64.b64decode(signature.value, validate=True)
    except ValueError:
        return None
    message = payload(sha256, lineage)
    for public in trusted:
        try:
            public.verify(raw, message)
        except InvalidSignature:
            continue
        return key_id(public)
    return None


def signing_key(*, create: bool = True) -> Ed25519PrivateKey:
    """The export's private key ($DINO_LINEAGE_SIGNING_KEY, else the local key, generated when `create`).

    Raises:
        ConfigError: the configured key is not an Ed25519 private key, its file is open to other
            users, or there is none and `create` is False.
    """
    configured = os.environ.get(SIGNING_KEY_ENV, "").strip()
    if configured:
        return _private_from(configured, f"${SIGNING_KEY_ENV}")
    path = config_dir() / PRIVATE_FILE
    if path.is_file():
        return _private_from(str(path), str(path))
    if not create:
        raise ConfigError(f"no lineage signing key: set ${SIGNING_KEY_ENV} or run `dino-mlops export` once "
                          f"to create {path}")
    return generate_local_key(path)


def generate_local_key(path: Path) -> Ed25519PrivateKey:
    """A new key pair: the private key at `path` (mode 0600 from the start), the public one beside it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic.write_bytes(path, pem, mode=0o600)
    atomic.write_bytes(path.with_name(PUBLIC_FILE), public_pem(private.public_key()), mode=0o644)
    logger.warning("created the lineage signing key %s (public key %s, id %s): deploy and the quality gate "
                   "on this machine trust it; elsewhere give them the public key in $%s", path,
                   path.with_name(PUBLIC_FILE), key_id(private.public_key()), PUBLIC_KEYS_ENV)
    return private


def public_pem(public: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def trusted_keys() -> list[Ed25519PublicKey]:
    """The public keys whose signatures deploy and the gate accept ([] when none is configured or local).

    Raises:
        ConfigError: a configured key is unreadable or not an Ed25519 key.
    """
    configured = os.environ.get(PUBLIC_KEYS_ENV, "").strip()
    if configured:
        return _publics_from(configured, f"${PUBLIC_KEYS_ENV}")
    private = os.environ.get(SIGNING_KEY_ENV, "").strip()
    if private:
        return [_private_from(private, f"${SIGNING_KEY_ENV}").public_key()]
    local = config_dir() / PUBLIC_FILE
    return _publics_from(str(local), str(local)) if local.is_file() else []


def _private_from(value: str, source: str) -> Ed25519PrivateKey:
    """A private key from PEM text or a PEM file (which must not be readable by other users)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if not value.startswith(_PEM_MARK):
        path = Path(value).expanduser()
        _check_private_file(path, source)
        value = path.read_text()
    try:
        key = serialization.load_pem_private_key(value.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{source} is not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{source} holds a key of type {type(key).__name__}, not an Ed25519 key; create one with "
                          "`openssl genpkey -algorithm ed25519`")
    return key


def _check_private_file(path: Path, source: str) -> None:
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"cannot read the lineage signing key {path} ({source}): {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"lineage signing key {path} is open to other users (mode {mode & 0o777:o}); "
                          f"run `chmod 600 {path}`")


def _publics_from(value: str, source: str) -> list[Ed25519PublicKey]:
    """Public keys from PEM text holding one or several keys, or from `:`-separated PEM file paths."""
    if value.startswith(_PEM_MARK):
        return _parse_publics(value, source)
    keys: list[Ed25519PublicKey] = []
    for part in filter(None, value.split(os.pathsep)):
        path = Path(part).expanduser()
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read the lineage public key {path} ({source}): {exc.strerror}") from None
        keys += _parse_publics(text, str(path))
    return keys


def _parse_publics(text: str, source: str) -> list[Ed25519PublicKey]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    blocks = [_PEM_MARK + block for block in text.split(_PEM_MARK)[1:]]
    keys = []
    for block in blocks:
        try:
            key = serialization.load_pem_public_key(block.strip().encode())
        except ValueError as exc:
            raise ConfigError(f"{source} holds something that is not a PEM public key ({exc})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError(f"{source} holds a key of type {type(key).__name__}, not an Ed25519 public key")
        keys.append(key)
    if not keys:
        raise ConfigError(f"{source} holds no PEM public key")
    return keys
