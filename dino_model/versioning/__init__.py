"""Data versioning with DVC: data.dvc at the repository root tracks data/ (see docs/data.md)."""

from dino_model.versioning.changes import DataDiff, diff, status
from dino_model.versioning.default_data import default_data_root, ensure_default_data
from dino_model.versioning.remotes import RemoteInfo, add_remote, list_remotes
from dino_model.versioning.repo import DATA_DIR, DVC_FILE, find_repo_root, init_repo
from dino_model.versioning.sync import checkout_version, snapshot
from dino_model.versioning.versions import DataVersion, current_version, history, resolve_version

__all__ = [
    "DATA_DIR", "DVC_FILE", "DataDiff", "DataVersion", "RemoteInfo", "add_remote", "checkout_version",
    "current_version", "default_data_root", "diff", "ensure_default_data", "find_repo_root", "history",
    "init_repo", "list_remotes", "resolve_version", "snapshot", "status",
]
