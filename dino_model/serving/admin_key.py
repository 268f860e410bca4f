"""The admin key that guards Triton's model control: where it lives, how strong it must be, how it travels.

Model control is code execution (a load request may carry a `model.py`), so every server restricts
it to callers sending this key. One key per server: given by the operator ($TRITON_ADMIN_KEY or a
file), or generated at start and written 0600 beside the repository, where `deploy` and `release`
find it. Kept apart from the server process code so that clients (deploy, gate, retraining) read
the key without importing how a server is started.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from dino_model.errors import ConfigError, ServingError
from dino_model.runtime import atomic

logger = logging.getLogger(__name__)

ADMIN_HEADER = "admin-key"  # the header name k8s/base/triton uses
ADMIN_KEY_ENV = "TRITON_ADMIN_KEY"  # the variable k8s/base/triton fills from the triton-admin-key Secret
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"  # Triton matches gRPC metadata under this prefix
KEY_FILE_SUFFIX = ".admin-key"
# a key that guards model control (code execution) on a network address: 32 characters of `openssl rand
# -hex` are 128 bits; the keys generated here are 43 characters of token_urlsafe(32), 256 bits
MIN_NETWORK_KEY_LENGTH = 32



def admin_key_path(repository: str | Path) -> Path:
    """Where a server with a generated key writes it: `<repository>.admin-key`, beside the repository."""
    repository = Path(repository).resolve()
    return repository.with_name(repository.name + KEY_FILE_SUFFIX)


def read_admin_key(path: str | Path, *, private: bool = True) -> str:
    """The key held in `path`; ConfigError when it is missing, empty or (with `private`) readable by others."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        key = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the admin key file {path}: {exc.strerror}") from None
    if private and mode & 0o077:
        raise ConfigError(f"admin key file {path} is open to other users (mode {mode & 0o777:o}); "
                          f"run `chmod 600 {path}`")
    return check_admin_key(key, f"admin key file {path}")


def check_admin_key(key: str, source: str = "the admin key") -> str:
    """`key` when it can travel in an HTTP header and a command-line flag: printable ASCII without spaces."""
    if not key or not (key.isascii() and key.isprintable()) or any(c.isspace() for c in key):
        raise ConfigError(f"{source} must hold one key of printable ASCII characters without spaces")
    return key


def check_key_strength(key: str, source: str = "the admin key") -> str:
    """`key` when it is long enough to guard model control on a network address (MIN_NETWORK_KEY_LENGTH)."""
    if len(key) < MIN_NETWORK_KEY_LENGTH:
        raise ConfigError(f"{source} has {len(key)} characters; a server on a network address needs at least "
                          f"{MIN_NETWORK_KEY_LENGTH} (e.g. `openssl rand -hex 32`)")
    return key


def write_admin_key(path: str | Path, key: str) -> Path:
    """Write `key` to `path` with mode 0600 from the start (a private temporary file renamed over it)."""
    path = Path(path)
    try:
        return atomic.write_text(path, key + "\n", mode=0o600)
    except OSError as exc:
        raise ServingError(f"cannot write the admin key file {path} ({exc.strerror}); give a key with "
                           f"--admin-key-file or ${ADMIN_KEY_ENV}") from None


def find_admin_key(repository: str | Path | None = None, key_file: str | Path | None = None, *,
                   env: str = ADMIN_KEY_ENV) -> str | None:
    """The admin key for the server of `repository`: `key_file`, else the key file beside `repository`
    (written for the server serving it), else the variable `env`, else None.

    A key file beside the repository that this process may not read belongs to another user (a step
    in a container sees the local server's file through a read-only mount): the key this process
    was given in `env` is then the one to use, and without it the error names the file.
    """
    if key_file:
        return read_admin_key(key_file, private=False)
    beside = admin_key_path(repository) if repository is not None else None
    if beside is not None and beside.is_file():
        if os.access(beside, os.R_OK) or not os.environ.get(env):
            return read_admin_key(beside, private=False)
        logger.info("the admin key file %s is not readable by this user: using $%s", beside, env)
    return key_from_env(env)


def key_from_env(env: str = ADMIN_KEY_ENV) -> str | None:
    """The admin key in the environment variable `env`, or None when it is unset or empty."""
    value = os.environ.get(env)
    return check_admin_key(value, f"${env}") if value else None


def admin_headers(key: str | None, header: str = ADMIN_HEADER) -> dict[str, str] | None:
    """gRPC metadata carrying the admin key (Triton expects the `triton-grpc-protocol-` prefix)."""
    return {GRPC_HEADER_PREFIX + header: key} if key else None


def admin_headers_for(repository: str | Path, key_file: str | Path | None = None, *, env: str = ADMIN_KEY_ENV,
                      header: str = ADMIN_HEADER) -> dict[str, str] | None:
    """The gRPC admin headers for the server of `repository` (see find_admin_key), or None without a key."""
    return admin_headers(find_admin_key(repository, key_file, env=env), header)
