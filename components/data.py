"""Data-version component: clone the data repository, pull one DVC version, hand it on as a Dataset.

The step needs nothing from the image but the code: the data repository comes by its git URL
(credentials from the `data-repo-credentials` Secret) and the data from its DVC remote (a mounted
directory or S3 with credentials from the `dvc-remote-credentials` Secret).
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Output

from components._image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def resolve_data_version(data_repo: str, version: str, dvc_remote: str, dvc_endpoint_url: str, pushgateway: str,
                         dataset: Output[Dataset]) -> NamedTuple("DataVersion", [("md5", str), ("git_rev", str)]):
    """Clone `data_repo`, pull `version` (git revision, data md5, or "" for the default branch) and copy it.

    Returns the data md5 (the training step's input, so a new version is a new cache key) and the git
    revision that records it; both go into the dataset's metadata and the model's lineage.
    """
    import shutil
    import tempfile
    from collections import namedtuple

    from dino_model.monitoring.metrics import record_data_version
    from dino_model.versioning.clone import fetch_data_version, public_url
    from dino_model.versioning.repo import DATA_DIR

    with tempfile.TemporaryDirectory(prefix="data-repo-") as work:
        root, resolved = fetch_data_version(data_repo, version, work, remote_url=dvc_remote,
                                            endpoint_url=dvc_endpoint_url or None)
        shutil.copytree(root / DATA_DIR, dataset.path, dirs_exist_ok=True)
    dataset.metadata.update({"md5": resolved.md5, "git_rev": resolved.rev or "", "repository": public_url(data_repo),
                             "nfiles": resolved.nfiles or 0, "size": resolved.size or 0})
    record_data_version(resolved.md5, gateway=pushgateway)
    return namedtuple("DataVersion", ["md5", "git_rev"])(resolved.md5, resolved.rev or "")
