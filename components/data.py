"""Data-version component: resolve one DVC version of the data repository and hand on its reference.

The step clones the data repository (git only; credentials from the `data-repo-credentials` Secret),
resolves the version and checks that its DVC remote holds it (S3 credentials from the
`dvc-remote-credentials` Secret), but reads none of the data: its outputs are plain strings (the md5,
the git revision and the whole reference as JSON, dino_model/versioning/reference.py). Each step that
needs the images materialises them from the remote itself, so no byte of the data set passes through
the pipeline's artifact store, and the strings give the cached steps a key that repeats when the data
does.
"""

from typing import NamedTuple

from kfp import dsl

from components._image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def resolve_data_version(data_repo: str, version: str, dvc_remote: str, dvc_endpoint_url: str, pushgateway: str
                         ) -> NamedTuple("DataVersion", [("md5", str), ("git_rev", str), ("reference", str)]):
    """Resolve `version` (git revision, data md5, or "" for the default branch) of `data_repo` on its remote.

    Returns the data md5, the git revision that recorded it, and the reference (JSON) that the other
    steps materialise the data from; the md5 is also registered at the Pushgateway `pushgateway`.
    """
    import tempfile
    from collections import namedtuple

    from dino_model.monitoring.metrics import record_data_version
    from dino_model.versioning.clone import resolve_data_reference

    with tempfile.TemporaryDirectory(prefix="data-repo-") as work:
        ref = resolve_data_reference(data_repo, version, work, remote_url=dvc_remote,
                                     endpoint_url=dvc_endpoint_url or None)
    record_data_version(ref.md5, gateway=pushgateway)
    return namedtuple("DataVersion", ["md5", "git_rev", "reference"])(ref.md5, ref.git_rev, ref.to_json())
