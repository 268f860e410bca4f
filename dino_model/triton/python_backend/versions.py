"""Which version of the embedding model the ensemble's steps are serving with, asked of Triton itself.

An ensemble step names its embedding model with version -1 (the latest ready one), so after
`dino-mlops deploy` promotes N+1 the steps follow without being reloaded; the steps that need to know
the version (the drift step labels its gauges with it and reads that version's drift reference; a
capture of inputs records it) ask here. Self-contained (the stub imports it from the version folder).
"""

from pathlib import Path


def version_folders(model_dir):
    """The version numbers present in a model folder, highest first (Triton's rule: positive integers)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted((int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and p.name[0] != "0"),
                  reverse=True)


def served_version(pb_utils, repository, model):
    """The highest version of `model` that Triton reports ready: what unpinned requests reach; None if none."""
    for version in version_folders(Path(repository) / model):
        if pb_utils.is_model_ready(model_name=model, model_version=str(version)):
            return version
    return None
