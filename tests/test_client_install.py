"""The client-only install, dino-mlops-client: `dino-mlops infer` without torch, kfp or dvc.

client/pyproject.toml builds the same `dino_model` package (client/dino_model links to it) with the
client's dependencies only. The checks here run the infer path where the full platform's heavy
packages cannot be imported: a meta-path hook makes `import torch` (torchvision, timm, kfp, dvc) fail,
and also any package outside what the client's declared dependencies pull in, so a module that
needs more than the client declares fails here rather than on a user's machine. The built wheel is
installed, as in tests/test_installed.py, in a scratch environment that sees the test environment's
packages through a path entry, with the hook as its sitecustomize, and embeds images served by a
real tritonserver; the embeddings must equal those of the full install's client and torchvision's
preprocessing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from email.parser import Parser
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from fixtures.wheels import build_wheel, scratch_venv
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from dino_model.cli.main import client_main

REPO_ROOT = Path(__file__).resolve().parents[1]
CLIENT = REPO_ROOT / "client"
HEAVY = ("torch", "torchvision", "timm", "kfp", "dvc")
FULL_PLATFORM = "needs the full platform: pip install dino-mlops"

HOOK = '''"""Only the client's dependencies import: the full platform's packages are absent, as in a client install."""
import importlib.abc
import sys

HEAVY = frozenset({heavy!r})
ALLOWED = frozenset({allowed!r}) | {{"sitecustomize", "usercustomize"}}


class ClientDependenciesOnly(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in HEAVY or not (top in ALLOWED or top in sys.stdlib_module_names):
            raise ModuleNotFoundError(f"No module named {{name!r}} (not a dependency of dino-mlops-client)",
                                      name=name)
        return None


sys.meta_path.insert(0, ClientDependenciesOnly())
'''


def pyproject(path: Path) -> dict:
    return tomllib.loads(path.read_text())["project"]


def client_import_names() -> set[str]:
    """Top-level import names of dino_model and of every installed distribution the client's dependencies
    pull in (extras and environment markers honoured), transitively."""
    wanted: set[str] = set()
    todo = [Requirement(text) for text in pyproject(CLIENT / "pyproject.toml")["dependencies"]]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        requirement = todo.pop()
        key = (canonicalize_name(requirement.name), frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        wanted.add(key[0])
        try:
            requires = metadata.distribution(key[0]).requires or []
        except metadata.PackageNotFoundError:
            continue  # an optional dependency not installed here cannot be imported either
        for text in requires:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in {"", *requirement.extras}):
                todo.append(sub)
    names = {name for name, dists in metadata.packages_distributions().items()
             if any(canonicalize_name(d) in wanted for d in dists)}
    return names | {"dino_model"}


def hook_source() -> str:
    return HOOK.format(heavy=sorted(HEAVY), allowed=sorted(client_import_names()))


def test_the_client_distribution_is_the_full_one_minus_the_platform() -> None:
    full, client = pyproject(REPO_ROOT / "pyproject.toml"), pyproject(CLIENT / "pyproject.toml")
    assert client["version"] == full["version"]
    assert client["scripts"] == {"dino-mlops": "dino_model.cli.main:client_main"}
    assert (CLIENT / "dino_model").is_symlink() and (CLIENT / "dino_model").resolve() == REPO_ROOT / "dino_model"
    names = {canonicalize_name(Requirement(text).name) for text in client["dependencies"]}
    assert names == {"numpy", "pillow", "tqdm", "tritonclient"}
    # the same pins as the full platform, so both installs resolve to the same versions
    full_pins = {canonicalize_name(Requirement(t).name): Requirement(t).specifier for t in full["dependencies"]}
    for text in client["dependencies"]:
        requirement = Requirement(text)
        assert requirement.specifier == full_pins[canonicalize_name(requirement.name)], text


FAKE_SERVER_RUN = '''
import json, sys
from pathlib import Path
import numpy as np
from dino_model.cli.main import build_parser
from dino_model.export.contract import EMBEDDING, ModelContract
from dino_model.serving.client import ServedModel
from dino_model.serving.inference import embed_images, predict_labels, write_embeddings

class FakeClient:
    """The served model's side of the conversation: a fixed linear map of the pixels, L2-normalised."""
    model_name = "dino"
    served = ServedModel("dino", 4, ModelContract(image_size=16, resize_size=18, embed_dim=8,
                                                   mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)), {{}})
    projection = np.random.default_rng(0).standard_normal((3 * 16 * 16, 8)).astype(np.float32)

    def infer(self, images):
        out = images.reshape(len(images), -1) @ self.projection
        return {{EMBEDDING: out / np.linalg.norm(out, axis=1, keepdims=True)}}

build_parser()
folder, out = Path(sys.argv[1]), Path(sys.argv[2])
result = embed_images([folder], FakeClient(), batch_size=3, concurrency=2)
index = write_embeddings(result, out / "index.npz")
result.predictions = predict_labels(result, index, k=1)
write_embeddings(result, out / "e.json")
from dino_model.monitoring.drift import batch_drift, build_reference
drift = batch_drift(result.embeddings, build_reference(result.embeddings, window=4, n_permutations=20))
heavy = sorted(m for m in sys.modules if m.partition(".")[0] in {heavy!r})
print(json.dumps({{"labels": result.labels, "predictions": result.predictions, "heavy": heavy,
                  "drift_windows": drift["windows"]}}))
'''


def write_class_folders(root: Path, digits_val: Path, per_class: int = 3, classes: str = "037") -> Path:
    for digit in classes:
        (root / digit).mkdir(parents=True)
        for image in sorted((digits_val / digit).glob("*.png"))[:per_class]:
            shutil.copy(image, root / digit / image.name)
    return root


def test_the_infer_path_imports_only_the_client_dependencies(tmp_path: Path, digits_root: Path) -> None:
    """Parsers, folder scan, preprocessing, batching, k-NN labels and output files, with a stand-in server."""
    folder = write_class_folders(tmp_path / "images", digits_root / "val")
    hook = tmp_path / "hook" / "sitecustomize.py"
    hook.parent.mkdir()
    hook.write_text(hook_source())
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(hook.parent), str(REPO_ROOT)])}
    blocked = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert blocked.returncode == 1 and "not a dependency of dino-mlops-client" in blocked.stderr
    out = subprocess.run([sys.executable, "-c", FAKE_SERVER_RUN.format(heavy=HEAVY), str(folder), str(tmp_path)],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["heavy"] == [] and summary["labels"] == [d for d in "037" for _ in range(3)]
    assert summary["predictions"] == summary["labels"]  # k = 1 against itself: each image's own label
    assert summary["drift_windows"] == 2  # the drift statistic runs without the platform's dependencies


@pytest.mark.parametrize("command", [["pretrain", "--help"], ["pretrain"], ["serve", "--repository", "r"],
                                     ["-v", "eval", "knn"], ["data", "status"], ["export"], ["pipeline", "run"]])
def test_the_client_command_names_the_full_platform_in_one_line(command: list[str],
                                                               capsys: pytest.CaptureFixture) -> None:
    assert client_main(command) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    word = next(arg for arg in command if not arg.startswith("-"))
    assert captured.err == f"dino-mlops: error: `dino-mlops {word}` {FULL_PLATFORM}\n"


def test_the_client_command_helps_with_infer(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        client_main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "dino-mlops infer" in text and "The other commands need the full platform: pip install dino-mlops" in text
    with pytest.raises(SystemExit) as exit_info:
        client_main(["infer", "--help"])
    assert exit_info.value.code == 0 and "--knn-index" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        client_main(["no-such-command"])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err


@pytest.fixture(scope="module")
def client_install(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The client wheel built from a copy of the checkout's layout (client/ beside dino_model/, the link
    kept), installed without dependencies in a scratch venv whose sitecustomize is the hook."""
    root = tmp_path_factory.mktemp("client-install")
    source = root / "source"
    (source / "client").mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(CLIENT / name, source / "client" / name)
    shutil.copytree(REPO_ROOT / "dino_model", source / "dino_model", ignore=shutil.ignore_patterns("__pycache__"))
    (source / "client" / "dino_model").symlink_to((CLIENT / "dino_model").readlink())
    wheel = build_wheel(source / "client", root / "dist", "dino_mlops_client-*.whl")
    venv = root / "venv"
    site = scratch_venv(wheel, venv)
    (site / "sitecustomize.py").write_text(hook_source())  # after pip, which runs in the venv's interpreter
    return SimpleNamespace(bin=venv / "bin", wheel=wheel, venv=venv)


def run(install: SimpleNamespace, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    return subprocess.run([str(install.bin / args[0]), *args[1:]], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_wheel_holds_the_package_and_none_of_the_platform(client_install: SimpleNamespace) -> None:
    with zipfile.ZipFile(client_install.wheel) as wheel:
        names = set(wheel.namelist())
        info = Parser().parsestr(wheel.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode())
        entry_points = wheel.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    shipped = {n for n in names if n.startswith("dino_model/")}
    for module in ("cli/main.py", "cli/serving.py", "serving/client.py", "serving/inference.py", "serving/images.py",
                   "data/folders.py", "export/contract.py", "triton/config.py"):
        assert f"dino_model/{module}" in shipped, module
    assert {Path(n).suffix for n in shipped} == {".py"}  # no package data: configs and rules are the platform's
    assert (info["Name"], info["Version"]) == ("dino-mlops-client", pyproject(REPO_ROOT / "pyproject.toml")["version"])
    requires = {canonicalize_name(Requirement(text).name) for text in info.get_all("Requires-Dist")}
    assert requires == {"numpy", "pillow", "tqdm", "tritonclient"} and not requires & set(HEAVY)
    assert "dino-mlops = dino_model.cli.main:client_main" in entry_points


def test_the_installed_command_is_the_client_and_torch_is_absent(client_install: SimpleNamespace,
                                                                 tmp_path: Path) -> None:
    out = run(client_install, "python", "-c", "import dino_model; print(dino_model.__file__)", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert str(client_install.venv) in out.stdout and str(REPO_ROOT) not in out.stdout
    for heavy in HEAVY:
        out = run(client_install, "python", "-c", f"import {heavy}", cwd=tmp_path)
        assert out.returncode == 1 and "not a dependency of dino-mlops-client" in out.stderr, heavy
    out = run(client_install, "dino-mlops", "--version", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == pyproject(CLIENT / "pyproject.toml")["version"], out.stderr
    for args in (["--help"], ["infer", "--help"]):
        out = run(client_install, "dino-mlops", *args, cwd=tmp_path)
        assert out.returncode == 0 and "usage: dino-mlops" in out.stdout and not out.stderr, out.stderr
    out = run(client_install, "dino-mlops", "pretrain", "--help", cwd=tmp_path)
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == f"dino-mlops: error: `dino-mlops pretrain` {FULL_PLATFORM}\n"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_onnx: Path, triton_tools):
    """The session's tiny exported model on a real tritonserver (a `cpu` repository)."""
    server = triton_tools.start(triton_tools.write_cpu_repository(tiny_onnx, tmp_path_factory.mktemp("repo")))
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.triton
def test_the_installed_infer_embeds_as_the_full_client(client_install: SimpleNamespace, served, tmp_path: Path,
                                                       digits_root: Path) -> None:
    from dino_model.config import EvalConfig
    from dino_model.data.datasets import load_rgb
    from dino_model.data.transforms import eval_transform
    from dino_model.serving.client import EmbeddingClient
    from dino_model.serving.inference import embed_images

    folder = write_class_folders(tmp_path / "images", digits_root / "val", per_class=4)
    index = tmp_path / "index.npz"
    out = run(client_install, "dino-mlops", "infer", str(folder), "--url", served.grpc_url, "--output", str(index),
              "--batch-size", "5", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["images"] == 12 and "Traceback" not in out.stderr
    with np.load(index) as data:
        paths, installed = list(data["paths"]), data["embeddings"]
    full = embed_images([folder], EmbeddingClient(served.grpc_url), batch_size=7)
    assert paths == full.paths
    np.testing.assert_allclose(installed, full.embeddings, atol=1e-6, rtol=0)
    # torchvision's evaluation transform and the full client, one request: the same embeddings
    client = EmbeddingClient(served.grpc_url)
    contract = client.served.contract
    transform = eval_transform(EvalConfig(image_size=contract.image_size, resize_size=contract.resize_size))
    images = np.stack([transform(load_rgb(Path(p))).numpy() for p in paths])
    np.testing.assert_allclose(installed, client.infer(images)["embedding"], atol=1e-5, rtol=0)
    labelled = tmp_path / "labelled.json"
    out = run(client_install, "dino-mlops", "infer", str(folder), "--url", served.grpc_url, "--output", str(labelled),
              "--knn-index", str(index), "--k", "1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    items = json.loads(labelled.read_text())["items"]
    assert [i["prediction"] for i in items] == [i["label"] for i in items] == [d for d in "037" for _ in range(4)]
