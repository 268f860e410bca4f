"""The package as users install it: a built wheel in a scratch environment, not the editable checkout.

The checkout's editable install hides packaging mistakes (a module the wheel leaves out, package
data that is not declared, an import that only works because the editable finder ran first). The
scratch environment sees the test environment's dependencies through a path entry, but not its
`.pth` hooks, so nothing of the checkout leaks in; commands run from an empty directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from fixtures.wheels import build_wheel, scratch_venv

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv holding the wheel of this checkout; returns its bin directory."""
    root = tmp_path_factory.mktemp("installed")
    source = root / "source"  # a copy, so the build leaves nothing in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    for name in ("dino_model", "components", "pipelines"):
        shutil.copytree(REPO_ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    venv = root / "venv"
    scratch_venv(build_wheel(source, root / "dist", "dino_mlops-*.whl"), venv)
    return venv / "bin"


def run(bin_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    return subprocess.run([str(bin_dir / args[0]), *args[1:]], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_wheel_is_what_runs(installed: Path, tmp_path: Path) -> None:
    out = run(installed, "python", "-c", "import dino_model, components, pipelines; print(dino_model.__file__)",
              cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert str(installed.parent) in out.stdout and str(REPO_ROOT) not in out.stdout


@pytest.mark.parametrize("command", [[], ["pretrain"], ["eval"], ["data"], ["serve"], ["deploy"], ["infer"],
                                     ["monitoring"], ["pipeline"], ["retrain"]])
def test_every_command_group_answers_help(installed: Path, tmp_path: Path, command: list[str]) -> None:
    out = run(installed, "dino-mlops", *command, "--help", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "usage: dino-mlops" in out.stdout and "Traceback" not in out.stderr


def test_the_installed_command_prints_the_package_version(installed: Path, tmp_path: Path) -> None:
    from importlib.metadata import version

    out = run(installed, "dino-mlops", "--version", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == version("dino-mlops")


def test_packaged_configs_rules_and_backend_ship_in_the_wheel(installed: Path, tmp_path: Path) -> None:
    code = ("from importlib.resources import files\n"
            "from dino_model.config import load_config\n"
            "cfg = load_config('digits_vit_tiny'); print(cfg.model.arch)\n"
            "for name in ('monitoring/rules.yml', 'monitoring/dashboard.json', 'triton/python_backend/model.py'):\n"
            "    assert files('dino_model').joinpath(name).is_file(), name\n")
    out = run(installed, "python", "-c", code, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("vit_")


def test_the_installed_command_compiles_the_pipeline(installed: Path, tmp_path: Path) -> None:
    out = run(installed, "dino-mlops", "pipeline", "compile", "--output", str(tmp_path / "p.yaml"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "dino-training" in (tmp_path / "p.yaml").read_text()


def test_a_bad_override_is_one_line_from_the_installed_command(installed: Path, tmp_path: Path) -> None:
    out = run(installed, "dino-mlops", "pretrain", "--config", "tiny", "no_such_section.key=1",
              "--output-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("dino-mlops: error:") and "Traceback" not in out.stderr
