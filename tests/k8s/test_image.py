"""The project image: the Dockerfile (parsed; no container engine here), its dependency locks, and the one
image setting shared by components/_image.py, the kustomize `images:` entry and the image's version label,
by tag or by a pinned registry digest."""

from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from k8s_render import INSTALLS, K8S_DIR, REPO_ROOT, all_pod_templates, containers, pod_templates, render
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
IMAGES = K8S_DIR / "components" / "images" / "kustomization.yaml"
LOCKS = {py: REPO_ROOT / "requirements" / f"image-py{py.replace('.', '')}.lock" for py in ("3.11", "3.12")}
LOCK_SCRIPT = REPO_ROOT / "scripts" / "lock.sh"
DIGEST = "sha256:" + "ab" * 32


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


def _entry(path: Path = IMAGES) -> dict[str, str]:
    return next(e for e in yaml.safe_load(path.read_text())["images"] if e["name"] == "dino-mlops")


def project_image(path: Path = IMAGES) -> str:
    """The reference the manifests get: name:tag, and @digest when the entry pins one (as kustomize writes it)."""
    entry = _entry(path)
    return f"{entry['newName']}:{entry['newTag']}" + (f"@{entry['digest']}" if entry.get("digest") else "")


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
    assert _entry()["newTag"] == version


def test_kustomize_image_equals_the_component_setting() -> None:
    if importlib.util.find_spec("components._image") is None:
        pytest.skip("components/_image.py (IMAGE, the one image setting) does not exist yet")
    from components._image import DEFAULT_IMAGE, PINNED_DIGEST, reference

    assert _entry()["newTag"] == DEFAULT_IMAGE.rsplit(":", 1)[1]
    assert project_image() == reference(DEFAULT_IMAGE, PINNED_DIGEST or None)


# ------------------------------------------------------------------------------------ images by digest


def test_the_reference_is_by_digest_exactly_when_a_registry_digest_is_known(tmp_path: Path, monkeypatch) -> None:
    import components._image
    from components._image import DEFAULT_IMAGE, ImageDigestError, resolve

    monkeypatch.setattr(components._image, "PINNED_DIGEST", "")

    assert resolve({}, tmp_path) == DEFAULT_IMAGE  # nothing known: the tag
    assert resolve({"DINO_IMAGE_DIGEST": DIGEST}, tmp_path) == f"{DEFAULT_IMAGE}@{DIGEST}"
    other = {"DINO_IMAGE": "reg.example/x:1", "DINO_IMAGE_DIGEST": DIGEST}
    assert resolve(other, tmp_path) == f"reg.example/x:1@{DIGEST}"
    assert resolve({"DINO_IMAGE": f"reg.example/x@{DIGEST}"}, tmp_path) == f"reg.example/x@{DIGEST}"
    with pytest.raises(ImageDigestError, match="DINO_IMAGE_DIGEST"):
        resolve({"DINO_IMAGE_DIGEST": "sha256:abc"}, tmp_path)
    # what scripts/image.sh records: a build without a registry has only an image ID, which is no reference
    record = tmp_path / "digests" / DEFAULT_IMAGE.replace("/", "_").replace(":", "_")
    record.parent.mkdir()
    record.write_text(f"image {DEFAULT_IMAGE}\nid sha256:{'cd' * 32}\n")
    assert resolve({}, tmp_path) == DEFAULT_IMAGE
    record.write_text(f"image {DEFAULT_IMAGE}\nid sha256:{'cd' * 32}\nregistry {DIGEST}\n")
    assert resolve({}, tmp_path) == f"{DEFAULT_IMAGE}@{DIGEST}"
    assert resolve({"DINO_IMAGE": "reg.example/x:1"}, tmp_path) == "reg.example/x:1"  # another image's record
    record.write_text(f"image {DEFAULT_IMAGE}\nregistry sha256:nothex\n")
    with pytest.raises(ImageDigestError, match="is not a digest"):
        resolve({}, tmp_path)
    # a pinned digest names the released image; a machine that built the name itself keeps its build
    monkeypatch.setattr(components._image, "PINNED_DIGEST", DIGEST)
    assert resolve({}, tmp_path / "elsewhere") == f"{DEFAULT_IMAGE}@{DIGEST}"
    assert resolve({"DINO_IMAGE": "reg.example/x:1"}, tmp_path / "elsewhere") == "reg.example/x:1"
    record.write_text(f"image {DEFAULT_IMAGE}\nid sha256:{'cd' * 32}\n")
    assert resolve({}, tmp_path) == DEFAULT_IMAGE


def test_pin_puts_the_digest_into_every_manifest_and_the_pipeline_image(tmp_path: Path) -> None:
    """`scripts/image.sh pin` on a copy of the tree: every container of the project image, the retraining
    pod's DINO_IMAGE (the image of a pipeline it compiles) and components/_image.py name the digest."""
    for part in ("k8s", "scripts", "components"):
        shutil.copytree(REPO_ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DINO_IMAGE_CACHE": str(tmp_path / "cache")}
    bad = subprocess.run(["bash", "scripts/image.sh", "pin", "sha256:123"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "no registry digest" in bad.stderr
    done = subprocess.run(["bash", "scripts/image.sh", "pin", DIGEST], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    expected = f"{_entry()['newName']}:{_entry()['newTag']}@{DIGEST}"
    assert project_image(tmp_path / "k8s" / "components" / "images" / "kustomization.yaml") == expected
    seen = 0
    for env_name in INSTALLS:
        for target in (tmp_path / "k8s" / "overlays" / env_name, tmp_path / "k8s" / "overlays" / env_name / "pretrain"):
            for resource in render(target):
                for _, template in pod_templates(resource):
                    for c in containers(template["spec"]):
                        if _entry()["newName"] in c["image"]:
                            assert c["image"] == expected, c["name"]
                            seen += 1
                        values = {e["name"]: e.get("value") for e in c.get("env", [])}
                        if "DINO_IMAGE" in values:
                            assert values["DINO_IMAGE"] == expected
    assert seen >= 4
    spec = importlib.util.spec_from_file_location("pinned_image", tmp_path / "components" / "_image.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.resolve({}, tmp_path / "cache") == expected
    again = subprocess.run(["bash", "scripts/image.sh", "pin", "sha256:" + "cd" * 32], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr  # a new pin replaces the old one
    assert (tmp_path / "k8s/components/images/kustomization.yaml").read_text().count("digest: sha256:") == 1


# ------------------------------------------------------------------------------- dependency locks


def parse_lock(path: Path) -> dict[str, tuple[Version, list[str]]]:
    """name -> (pinned version, sha256 hashes) of a `--generate-hashes` lock; raises on an unpinned line."""
    pins: dict[str, tuple[Version, list[str]]] = {}
    for entry in re.split(r"\n(?=\S)", path.read_text()):
        line = " ".join(part.strip().rstrip("\\") for part in entry.splitlines() if not part.strip().startswith("#"))
        if not line.strip():
            continue
        requirement = line.split(" --hash=")[0].split(";")[0].strip()
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s]+)", requirement)
        assert match, f"{path.name}: not pinned: {requirement!r}"
        pins[canonicalize_name(match[1])] = (Version(match[2]), re.findall(r"--hash=(sha256:[0-9a-f]{64})", line))
    return pins


def _dockerfile_extras() -> set[str]:
    runs = " ".join(_args("RUN"))
    found = re.findall(r'pip install [^&;]*--no-index[^&;]*"\.\[([a-z0-9,-]+)\]"', runs)
    assert len(found) == 1, "the project is installed once, with --no-deps --no-build-isolation --no-index"
    return set(found[0].split(","))


def test_the_dockerfile_installs_only_from_the_hashed_locks() -> None:
    runs = _args("RUN")
    installs = [m for run in runs for m in re.findall(r"pip install [^&;]*", run)]
    assert any("--require-hashes" in i and "--no-deps" in i and re.search(r"-r \S*lock", i) for i in installs)
    for install in installs:
        locked = "--require-hashes" in install
        local = all(flag in install for flag in ("--no-deps", "--no-build-isolation", "--no-index"))
        assert locked or local, f"an install that fetches unhashed files: {install}"
    copied = " ".join(_args("COPY"))
    for lock in LOCKS.values():
        assert str(lock.relative_to(REPO_ROOT)) in copied
    extras = re.search(r"EXTRAS=\(([^)]*)\)", LOCK_SCRIPT.read_text())[1].split()
    assert _dockerfile_extras() == set(extras), "scripts/lock.sh locks other extras than the Dockerfile installs"


@pytest.mark.parametrize("python", sorted(LOCKS))
def test_the_lock_covers_pyprojects_dependencies(python: str) -> None:
    """Every dependency of the installed extras (and the build backend) is pinned, to a version its
    specifier allows, with at least one sha256; pip refuses the install otherwise."""
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    pins = parse_lock(LOCKS[python])
    assert all(hashes for _, hashes in pins.values()), "a pin without a hash"
    wanted = list(pyproject["project"]["dependencies"]) + list(pyproject["build-system"]["requires"])
    for extra in _dockerfile_extras():
        wanted += pyproject["project"]["optional-dependencies"][extra]
    env = {"python_version": python, "python_full_version": f"{python}.0", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
           "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}
    problems = []
    for text in wanted:
        requirement = Requirement(text)
        if requirement.marker and not requirement.marker.evaluate(env):
            continue
        name = canonicalize_name(requirement.name)
        if name not in pins:
            problems.append(f"{requirement} is not in the lock")
        elif not requirement.specifier.contains(pins[name][0], prereleases=True):
            problems.append(f"{requirement}: the lock pins {pins[name][0]}")
    assert not problems, f"{LOCKS[python].name} is stale (bash scripts/lock.sh): " + "; ".join(problems)
    assert Marker("python_version >= '3.11'").evaluate(env)


def test_a_stale_lock_is_reported(tmp_path: Path) -> None:
    """The parser behind the check above refuses an unpinned line and finds a version out of range."""
    lock = tmp_path / "x.lock"
    lock.write_text("torch>=2 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    with pytest.raises(AssertionError, match="not pinned"):
        parse_lock(lock)
    lock.write_text("torch==2.1.0 \\\n    --hash=sha256:" + "0" * 64 + "\n    # via x\n")
    version, hashes = parse_lock(lock)["torch"]
    assert not Requirement("torch>=2.14").specifier.contains(version) and hashes == ["sha256:" + "0" * 64]
