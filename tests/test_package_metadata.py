"""Both distributions declare their licence as an SPDX expression (PEP 639), which setuptools reads
without the deprecation warning the `{text = ...}` table prints on every install since setuptools 77."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PROJECTS = [REPO_ROOT / "pyproject.toml", REPO_ROOT / "client" / "pyproject.toml"]


@pytest.mark.parametrize("pyproject", PROJECTS, ids=["platform", "client"])
def test_license_is_an_spdx_string_and_the_backend_reads_it(pyproject: Path) -> None:
    meta = tomllib.loads(pyproject.read_text())
    assert meta["project"]["license"] == "Apache-2.0"
    assert not any("License ::" in c for c in meta["project"].get("classifiers", []))  # refused beside it
    (setuptools_req,) = [r for r in meta["build-system"]["requires"] if r.startswith("setuptools")]
    assert int(re.fullmatch(r"setuptools>=(\d+).*", setuptools_req).group(1)) >= 77


def test_building_the_client_metadata_prints_no_license_warning(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", "from setuptools import build_meta as b; import sys; "
                             f"b.prepare_metadata_for_build_wheel({str(tmp_path)!r})"],
                            cwd=REPO_ROOT / "client", capture_output=True, text=True, check=True)
    assert "project.license" not in result.stderr + result.stdout
    metadata = next(tmp_path.glob("*.dist-info")) / "METADATA"
    assert "License-Expression: Apache-2.0" in metadata.read_text()
