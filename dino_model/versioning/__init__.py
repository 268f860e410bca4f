"""Data versioning with DVC: data.dvc at the repository root tracks data/ (see docs/data.md).

Which module holds which `dino-mlops data` command (dino_model/cli/data.py):

| command                        | module                                                            |
|--------------------------------|-------------------------------------------------------------------|
| `data init`                    | repo.py (`init_repo`)                                             |
| `data snapshot` (add and push) | sync.py (`snapshot`: records data/ as a version, pushes it)       |
| `data pull`                    | sync.py (`checkout_version`), over store.py (fetch) and switch.py |
| `data status`                  | changes.py (`status`)                                             |
| `data diff`                    | changes.py (`diff`)                                               |
| `data log`                     | versions.py (`history`)                                           |
| `data ensure`                  | default_data.py (`ensure_default_data`)                           |
| `data remote add/list/default` | remotes.py (`add_remote`, `list_remotes`, `set_default_remote`)   |

There is no separate `data add` or `data push`: `data snapshot` adds and pushes in one transaction.
`data materialize` writes a packaged data set and is not versioning (dino_model.data.materialize).
clone.py (a data version from a git URL, for pipeline steps), reference.py (a version by reference: what
the data step hands on) and mirror.py (a referenced version materialised from the remote by md5) back
no `data` command.
"""

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
