"""The project image: the Dockerfile (parsed; no container engine here) and the one image setting
shared by components/_image.py, the kustomize `images:` entry and the image's version label."""

from __future__ import annotations

import importlib.util
import re
import shlex
import tomllib

import pytest
import yaml
from k8s_render import INSTALLS, K8S_DIR, REPO_ROOT, all_pod_templates, containers

DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
IMAGES = K8S_DIR / "components" / "images" / "kustomization.yaml"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        current += " " + stripped.removesuffix("\\")
        if not stripped.endswith("\\"):
            lines.append(current.strip())
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def _args(name: str) -> list[str]:
    return [args for instr, args in instructions() if instr == name]


def project_image() -> str:
    entries = yaml.safe_load(IMAGES.read_text())["images"]
    entry = next(e for e in entries if e["name"] == "dino-mlops")
    return f"{entry['newName']}:{entry['newTag']}"


def test_base_image_defaults_to_a_pinned_cuda_runtime() -> None:
    (base,) = _args("FROM")
    if base.startswith("$"):  # a build argument (local builds pass a Debian base): its default is production's
        arg = base.strip("${}")
        defaults = dict(a.split("=", 1) for a in _args("ARG") if a.startswith(f"{arg}="))
        assert arg in defaults, f"FROM {base} needs ARG {arg}=<default> before it"
        base = defaults[arg]
    name, tag = base.split("@")[0].rsplit(":", 1)
    assert name == "nvidia/cuda" and tag != "latest"
    assert re.fullmatch(r"\d+\.\d+\.\d+-(cudnn-)?runtime-ubuntu\d{2}\.\d{2}", tag), tag


def test_runs_as_the_non_root_user_the_manifests_expect(rendered) -> None:
    users = _args("USER")
    uid, gid = (int(x) for x in users[-1].split(":"))
    assert uid != 0 and gid != 0
    image = project_image()
    checked = 0
    for env in INSTALLS:
        for target in (env, f"{env}/pretrain"):
            for where, template in all_pod_templates(rendered[target]):
                pod_ctx = template["spec"].get("securityContext", {})
                for c in containers(template["spec"]):
                    if c["image"] == image:
                        ctx = {**pod_ctx, **c.get("securityContext", {})}
                        assert (ctx["runAsUser"], ctx["runAsGroup"]) == (uid, gid), where
                        checked += 1
    assert checked >= 4  # CronJob and both PyTorchJob roles, per environment


def test_installs_the_project_for_dvc_and_git() -> None:
    runs = " ".join(_args("RUN"))
    assert re.search(r"pip install [^&]*\"?\.(\[[a-z0-9,]+\])?\"?", runs)
    assert "git config --system --add safe.directory" in runs
    env = " ".join(_args("ENV"))
    assert re.search(r"\bDVC_NO_ANALYTICS=1\b", env)
    assert re.search(r"\bDVC_SITE_CACHE_DIR=/tmp/", env)


def test_copied_sources_exist_and_are_in_the_build_context() -> None:
    ignored = {line.strip() for line in DOCKERIGNORE.read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "data", "runs"} <= ignored
    for args in _args("COPY"):
        *sources, _dest = shlex.split(args)
        for source in sources:
            assert (REPO_ROOT / source).exists(), f"COPY {source}: no such path"
            assert source.rstrip("/") not in ignored, f"COPY {source} is excluded by .dockerignore"


def test_version_label_matches_the_project_and_the_image_tag() -> None:
    version = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    labels = " ".join(_args("LABEL"))
    assert f'org.opencontainers.image.version="{version}"' in labels
    assert project_image().endswith(f":{version}")


def test_kustomize_image_equals_the_component_setting() -> None:
    if importlib.util.find_spec("components._image") is None:
        pytest.skip("components/_image.py (IMAGE, the one image setting) does not exist yet")
    from components._image import IMAGE

    assert project_image() == IMAGE
