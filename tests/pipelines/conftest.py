"""Fixtures for the pipeline glue: throw-away git + DVC repositories and the session's exported model.

Both come from the library's test folders (loaded by path: test folders are not packages under
--import-mode=importlib): the repositories from tests/dino_model/versioning/conftest.py (with its
DVC site cache and git identity for every test here), the trained and exported tiny model from
tests/dino_model/export/conftest.py, so the whole session shares one training run.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

TESTS = Path(__file__).resolve().parents[1]


def _load(relative: str, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, TESTS / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_versioning = _load("dino_model/versioning/conftest.py", "dino_pipelines_versioning_fixtures")
_site_cache = _versioning._site_cache
_git_identity = _versioning._git_identity
write_images = _versioning.write_images
repo = _versioning.repo

_export = _load("dino_model/export/conftest.py", "dino_pipelines_export_fixtures")
tiny_checkpoint = _export.tiny_checkpoint
tiny_export = _export.tiny_export
tiny_onnx = _export.tiny_onnx
