"""Data-version component: resolve a DVC version and hand the images on as a Dataset artifact."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from components._image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def resolve_data_version(repo_root: str, version: str, dataset: Output[Dataset]) -> str:
    """Check out `version` (git revision or md5; "" = the recorded one, rebuilt if needed) and copy it.

    Returns the data md5, which the training step takes as an input so a new version is a new cache key.
    """
    import shutil

    from dino_model.versioning.default_data import ensure_default_data
    from dino_model.versioning.repo import DATA_DIR
    from dino_model.versioning.sync import checkout_version

    resolved = checkout_version(repo_root, version) if version else ensure_default_data(repo_root)
    shutil.copytree(f"{repo_root}/{DATA_DIR}", dataset.path, dirs_exist_ok=True)
    dataset.metadata.update({k: v for k, v in resolved.to_dict().items() if v is not None})
    return resolved.md5
