"""DVC remotes: the embedded local default, S3-compatible stores, and checking a remote before use.

The committed `.dvc/config` names a local directory (`.dvc-remote/`, beside the checkout and ignored
by git) as the default remote, so the platform works with no storage service. S3-compatible stores
(AWS, MinIO, Ceph) go through the optional dvc-s3 plugin and `endpointurl`.
Secrets never enter `.dvc/config`, which is committed: they come from the standard AWS_* environment
variables, or are copied from them into the git-ignored `.dvc/config.local` on request. DVC writes its
config files with the process umask (usually world-readable), so `.dvc/config.local` is created, or
tightened, to mode 0600 before every write made here.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dino_model.errors import DataError
from dino_model.versioning.repo import open_repo

if TYPE_CHECKING:
    from dvc.data_cloud import Remote
    from dvc.repo import Repo

logger = logging.getLogger(__name__)

# Plugins DVC needs per URL scheme, with the install line for each.
PLUGINS = {"s3": ("dvc_s3", "pip install 'dino-mlops[s3]'  (or: pip install dvc-s3)")}
CREDENTIAL_ENV = {"access_key_id": "AWS_ACCESS_KEY_ID", "secret_access_key": "AWS_SECRET_ACCESS_KEY",
                  "session_token": "AWS_SESSION_TOKEN"}


@dataclass(frozen=True)
class RemoteInfo:
    """A configured remote, as the merged DVC configuration sees it (secrets left out)."""

    name: str
    url: str
    default: bool
    endpoint_url: str | None = None


def scheme_of(url: str) -> str:
    match = re.match(r"^(\w+)://", url)
    return match.group(1) if match else "local"


def require_plugin(name: str, url: str) -> None:
    """DataError naming the package to install when the remote's scheme needs a missing DVC plugin."""
    scheme = scheme_of(url)
    if scheme in PLUGINS:
        module, install = PLUGINS[scheme]
        if importlib.util.find_spec(module) is None:
            raise DataError(f"remote {name!r} is {url}, and {scheme}:// remotes need the {module.replace('_', '-')} "
                            f"plugin, which is not installed: {install}")


def list_remotes(root: str | Path) -> list[RemoteInfo]:
    """Remotes of the repository (repo, global and local configuration merged)."""
    with open_repo(root) as repo:
        conf = repo.config
        default = conf["core"].get("remote")
        return [RemoteInfo(name, str(section.get("url", "")), name == default, section.get("endpointurl"))
                for name, section in conf["remote"].items()]


def add_remote(root: str | Path, name: str, url: str, *, endpoint_url: str | None = None, default: bool = False,
               local: bool = False, store_credentials: bool = False, region: str | None = None) -> RemoteInfo:
    """Add (or replace) remote `name` at `url`.

    Args:
        root: repository root.
        name: remote name.
        url: a local path, `s3://bucket/prefix`, or any URL DVC supports.
        endpoint_url: S3-compatible endpoint (MinIO: `http://minio:9000`).
        default: make it the default remote.
        local: write it to `.dvc/config.local` (this machine only) instead of the committed `.dvc/config`.
        store_credentials: copy AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) from
            the environment into `.dvc/config.local`; without it they are read from the environment at use.
        region: S3 region.
    """
    from dvc.config_schema import RelPath

    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise DataError(f"remote name {name!r} must be letters, digits, '_', '-' or '.'")
    scheme = scheme_of(url)
    if (endpoint_url or store_credentials or region) and scheme != "s3":
        raise DataError(f"--endpoint-url, --region and --store-credentials apply to s3:// remotes, not {url}")
    section: dict[str, Any] = {"url": url if scheme != "local" else RelPath(str(Path(url).expanduser().resolve()))}
    if endpoint_url:
        section["endpointurl"] = endpoint_url
    if region:
        section["region"] = region
    secrets = _credentials_from_env(name) if store_credentials else {}
    with open_repo(root) as repo:
        level = "local" if local else "repo"
        with edit_config(repo, level) as conf:
            conf["remote"][name] = section
            if default:
                conf["core"]["remote"] = name
        if secrets:
            with edit_config(repo, "local") as conf:
                conf["remote"].setdefault(name, {}).update(secrets)
    where = ".dvc/config.local" if local else ".dvc/config"
    logger.info("remote %r -> %s written to %s%s%s", name, url, where, " (default)" if default else "",
                "; credentials copied to .dvc/config.local" if secrets else "")
    if scheme in PLUGINS:
        try:
            require_plugin(name, url)
        except DataError as exc:
            logger.warning("%s", exc)
    return RemoteInfo(name, url, default, endpoint_url)


def _credentials_from_env(name: str) -> dict[str, str]:
    found = {key: os.environ[env] for key, env in CREDENTIAL_ENV.items() if os.environ.get(env)}
    missing = [env for key, env in CREDENTIAL_ENV.items() if key != "session_token" and key not in found]
    if missing:
        raise DataError(f"--store-credentials for remote {name!r} reads {', '.join(missing)} from the environment, "
                        "and they are not set; export them (they are never written to .dvc/config)")
    return found


def get_remote(repo: Repo, name: str | None = None, *, reading: bool = False) -> Remote:
    """The DVC remote `name` (default: core.remote), checked to be configured and usable.

    Args:
        repo: open repository.
        name: remote name; None for the default remote.
        reading: also require that a local remote's directory exists (there is something to read).

    Raises:
        DataError: no such remote, no default remote, a missing plugin, or an empty local remote.
    """
    from dvc.exceptions import DvcException

    remotes = repo.config["remote"]
    name = name or repo.config["core"].get("remote")
    if not name:
        hint = (f"make one the default with `dino-mlops data remote default NAME` (configured: {', '.join(remotes)})"
                if remotes else "add one with `dino-mlops data remote add local PATH --default`")
        raise DataError(f"no DVC remote is set for {repo.root_dir}: {hint}, or pass --remote NAME")
    if name not in remotes:
        raise DataError(f"DVC remote {name!r} is not configured in {repo.root_dir} "
                        f"(configured: {', '.join(remotes) or 'none'}); add it with `dino-mlops data remote add`")
    url = str(remotes[name].get("url", ""))
    require_plugin(name, url)
    try:
        remote = repo.cloud.get_remote(name)
    except DvcException as exc:
        raise DataError(f"DVC remote {name!r} ({url}) cannot be used: {exc}") from exc
    if reading and remote.fs.protocol == "local" and not remote.fs.exists(remote.path):
        raise DataError(f"DVC remote {name!r} at {remote.path} does not exist: nothing was ever pushed there. "
                        "Point the remote at the right folder (`dino-mlops data remote add ... --local`), or "
                        "rebuild the default data with `dino-mlops data ensure`")
    return remote


def set_default_remote(root: str | Path, name: str, *, local: bool = False) -> None:
    """Make `name` the default remote (in .dvc/config, or .dvc/config.local with `local`)."""
    with open_repo(root) as repo:
        if name not in repo.config["remote"]:
            raise DataError(f"DVC remote {name!r} is not configured (configured: {', '.join(repo.config['remote'])})")
        with edit_config(repo, "local" if local else "repo") as conf:
            conf["core"]["remote"] = name


@contextmanager
def edit_config(repo: Repo, level: str) -> Iterator[dict[str, Any]]:
    """`repo.config.edit(level)`, with `.dvc/config.local` (which may hold credentials) kept at mode 0600."""
    if level == "local":
        private_file(Path(repo.config.files["local"]))
    with repo.config.edit(level) as conf:
        yield conf


def private_file(path: Path) -> None:
    """Create `path` if needed and make it readable and writable by its owner only (DVC rewrites it in place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    path.chmod(0o600)
