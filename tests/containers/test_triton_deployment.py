"""The Triton Deployments, as rendered, played by podman with the project image; models put in service by the
pipeline's own deploy step; gRPC answered outside the pod; a second version rolled out under load with zero
failed requests (dev); the prod overlay's Triton and the deploy step sharing the repository, each with its
own user (prod-gpu).

The deploy step is `components.deploy.deploy_to_triton`, run as KFP runs it on the cluster: in the project
image, as the image's uid/gid 10001 with no fsGroup and no supplementary group (KFP sets no pod
securityContext), on a read-only root filesystem, with the claim `triton-models` mounted read-write at
/models, the admin key from the Secret in $TRITON_ADMIN_KEY, and the ONNX artifact (with the metadata
export_onnx records) at its path. Triton's pod mounts the same claim read-only; the only thing they share
is that volume and Triton's gRPC port.

The Deployments are played through tests/fixtures/kube_play.py, whose docstring lists every change made
on one machine; nothing is patched here. In particular the claim is a fresh volume (root:root 0755) that
gets the kubelet's fsGroup semantics for Triton's pod, and nothing else: who may write where is decided
by the manifests alone. For prod-gpu, the project image stands in for NVIDIA's Triton image (none can be
pulled here, and no GPU runs it), with the command, args and env of the CPU flavour
(k8s/components/triton-cpu) for the server container; users, groups and securityContext stay prod's.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from fixtures import kube_play

pytestmark = pytest.mark.slow
logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
UID = 10001
Resource = dict[str, Any]
Podman = Callable[..., subprocess.CompletedProcess]

# what the deploy step's pod runs: the component's own function, with the artifact KFP would hand it
DEPLOY_STEP = """
import json, sys
from kfp import dsl
from components.deploy import deploy_to_triton
onnx = dsl.Model(name="onnx", uri="/artifact", metadata=json.loads(sys.argv[1]))
version = deploy_to_triton.python_func(onnx=onnx, repository=sys.argv[2], triton_url=sys.argv[3],
                                       model_name="dino", flavour="cpu", pushgateway="")
print(json.dumps({"version": version}))
"""


def _render(overlay: str) -> list[Resource]:
    kubectl = REPO_ROOT / ".venv" / "bin" / "kubectl"
    out = subprocess.run([str(kubectl if kubectl.exists() else "kubectl"), "kustomize",
                          str(REPO_ROOT / "k8s" / "overlays" / overlay)], check=True, capture_output=True, text=True)
    return list(yaml.safe_load_all(out.stdout))


def _prod_options(rendered: list[Resource], tag: str, workdir: Path, image: str) -> kube_play.Options:
    """prod-gpu's Triton on this machine: the project image for NVIDIA's, running the CPU flavour's server."""
    (deployment,) = [r for r in rendered if r["kind"] == "Deployment" and r["metadata"]["name"] == "triton"]
    nvidia = {c["image"] for c in deployment["spec"]["template"]["spec"]["containers"]}
    (nvidia_image,) = nvidia
    assert nvidia_image.startswith("nvcr.io/nvidia/tritonserver:"), nvidia_image
    cpu = yaml.safe_load((REPO_ROOT / "k8s" / "components" / "triton-cpu" / "deployment.yaml").read_text())
    (server,) = cpu["spec"]["template"]["spec"]["containers"]
    swap = kube_play.Substitution(
        image=image, container="tritonserver", command=server["command"], args=server["args"],
        env=tuple(server["env"]),
        reason="NVIDIA's image cannot be pulled here and needs a GPU; the project image's tritonserver serves the "
               "cpu flavour with the CPU flavour's command, args and env (k8s/components/triton-cpu)")
    return kube_play.Options(suffix=tag, workdir=workdir, substitutions={nvidia_image: swap},
                             secrets={"triton-admin-key": {"admin-key": secrets.token_hex(24)}},
                             without_gpus="no GPU on this machine; the stand-in serves on CPU")


@contextmanager
def _triton(podman: Podman, plan: kube_play.Plan, file: Path) -> Iterator[dict]:
    """The played Triton pod, ready; taken down with its volume and secret afterwards."""
    pod = plan.pod("triton")
    container = pod.container("tritonserver")
    with kube_play.provisioned(podman, plan), kube_play.running(podman, plan, file):
        try:
            _wait_ready(podman, container, pod.ports["http"])
            env = pod.env["tritonserver"]
            yield {"ports": pod.ports, "key": env["TRITON_ADMIN_KEY"], "claim": plan.volumes["triton-models"],
                   "container": container, "repository": env["MODEL_REPOSITORY"]}
        finally:
            logs = podman("logs", container)
            logger.info("triton pod log tail:\n%s", (logs.stdout + logs.stderr)[-3000:])


@pytest.fixture
def triton_pod(podman: Podman, image: str, tmp_path: Path) -> Iterator[dict]:
    """The dev overlay's Deployment, played as rendered."""
    tag = uuid.uuid4().hex[:8]
    key = secrets.token_hex(24)  # the Secret the operator creates (docs/operations.md)
    plan = kube_play.translate(_render("dev"), "Deployment", "triton", kube_play.Options(
        suffix=tag, workdir=tmp_path, secrets={"triton-admin-key": {"admin-key": key}}))
    with _triton(podman, plan, tmp_path / "triton.yaml") as pod:
        yield pod


def _wait_ready(podman: Podman, container: str, http_port: int, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        state = podman("inspect", "--format", "{{.State.Status}} {{.RestartCount}}", container).stdout.split()
        if state and (state[0] in {"exited", "stopped"} or state[-1] not in {"0", "<no value>"}):
            logs = podman("logs", container)
            pytest.fail(f"the Triton pod exited:\n{(logs.stdout + logs.stderr)[-3000:]}")
        time.sleep(1)
    pytest.fail(f"the Triton pod was not ready within {timeout_s:.0f} s")


@pytest.fixture
def artifact(tiny_export: dict) -> Iterator[tuple[Path, dict]]:
    """The exported model as the export step leaves it: a folder with model.onnx and its KFP metadata."""
    from dino_model.export.lineage import LineageRecord

    folder = Path(tempfile.mkdtemp(prefix="onnx-artifact-"))  # outside pytest's 0700 folders: uid 10001 reads it
    folder.chmod(0o755)
    source = Path(tiny_export["details"]["files"]["fp32"]["path"])
    shutil.copy(source, folder / "model.onnx")
    (folder / "model.onnx").chmod(0o644)
    record = LineageRecord(sha256=tiny_export["details"]["files"]["fp32"]["sha256"],
                           lineage=tiny_export["details"]["lineage"])
    metadata = {"framework": "onnx", **record.to_metadata()}
    try:
        yield folder, metadata
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _run_deploy_step(podman: Podman, image: str, pod: dict, artifact: tuple[Path, dict]
                     ) -> subprocess.CompletedProcess:
    """The pipeline's deploy step in its own container, as KFP runs it (image user, no fsGroup)."""
    folder, metadata = artifact
    return podman(
        "run", "--rm", "--network=host", "--read-only", "--tmpfs", "/tmp",  # the image's own USER, as KFP
        "-e", "HOME=/tmp", "-e", f"TRITON_ADMIN_KEY={pod['key']}",
        "-v", f"{pod['claim']}:/models", "-v", f"{folder}:/artifact:ro",
        image, "python", "-c", DEPLOY_STEP, json.dumps(metadata), pod["repository"],
        f"127.0.0.1:{pod['ports']['grpc']}", timeout=300)


def _deploy_step(podman: Podman, image: str, pod: dict, artifact: tuple[Path, dict]) -> int:
    """The deploy step run to success; returns the version it put in service."""
    result = _run_deploy_step(podman, image, pod, artifact)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])["version"]


def test_dev_triton_deployment_serves_what_the_deploy_step_rolls_out(podman: Podman, image: str, triton_pod: dict,
                                                                    artifact: tuple[Path, dict]) -> None:
    from tritonclient.utils import InferenceServerException

    from dino_model.serving.client import EmbeddingClient
    from dino_model.serving.loadtest import LoadGenerator

    url = f"127.0.0.1:{triton_pod['ports']['grpc']}"
    admin = EmbeddingClient(url, headers={"triton-grpc-protocol-admin-key": triton_pod["key"]})
    index = admin.call("index", admin.raw.get_model_repository_index, as_json=True)
    assert index.get("models", []) == [], "a new claim: an empty repository, ready and serving nothing"
    # the repository API is closed to callers without the key, from outside the pod
    with pytest.raises(InferenceServerException, match="(?i)unauthenticated|admin|permission"):
        EmbeddingClient(url).raw.get_model_repository_index()

    assert _deploy_step(podman, image, triton_pod, artifact) == 1
    client = EmbeddingClient(url)
    images = np.random.default_rng(0).standard_normal((3, *client.served.contract.input_shape), dtype=np.float32)
    first = client.embed(images)
    assert first.shape[0] == 3 and np.isfinite(first).all()

    with LoadGenerator(url, clients=3) as load:
        time.sleep(2)
        assert _deploy_step(podman, image, triton_pod, artifact) == 2
        time.sleep(2)
    report = load.report
    logger.info("load during the rollout: %s", report.to_dict())
    assert report.errors == 0, report.error_samples
    assert report.requests > 20 and set(report.versions) >= {"1", "2"}, report.versions
    index = admin.call("index", admin.raw.get_model_repository_index, as_json=True)["models"]
    assert sorted(m["version"] for m in index if m["name"] == "dino" and m.get("state") == "READY") == ["2"]
    np.testing.assert_allclose(EmbeddingClient(url).embed(images), first, atol=1e-5)


def test_prod_triton_and_the_deploy_step_share_the_repository_each_as_its_own_user(
        podman: Podman, image: str, tmp_path: Path, artifact: tuple[Path, dict]) -> None:
    """prod-gpu's Triton pod (uid 1000, its fsGroup, its init container) and the deploy step (uid/gid 10001, no
    fsGroup) on one claim: the step creates version 1 in the repository Triton's init container made, and
    Triton, as its own user, loads and serves it.

    With Triton's former `fsGroup: 1000` the repository was `1000:1000 2755` and the step failed with
    "PermissionError: [Errno 13] Permission denied: '/models/repository/dino'"."""
    from dino_model.serving.client import EmbeddingClient

    tag = uuid.uuid4().hex[:8]
    rendered = _render("prod-gpu")
    plan = kube_play.translate(rendered, "Deployment", "triton", _prod_options(rendered, tag, tmp_path, image))
    context = plan.pod("triton").manifest["spec"]["securityContext"]
    assert (context["runAsUser"], context["runAsGroup"]) == (1000, 1000), "prod's Triton user, as rendered"
    with _triton(podman, plan, tmp_path / "triton-prod.yaml") as pod:
        uid, gid, groups = podman("exec", pod["container"], "sh", "-c", "id -u; id -g; id -G").stdout.split("\n")[:3]
        assert (uid, gid, set(groups.split())) == ("1000", "1000", {"1000", str(context["fsGroup"])}), groups
        root = kube_play.volume_root(podman, plan, "triton-models")
        repository = root / pod["repository"].removeprefix("/models/")
        info = repository.stat()
        logger.info("claim root %o %d:%d, repository %o %d:%d", root.stat().st_mode, root.stat().st_uid,
                    root.stat().st_gid, info.st_mode, info.st_uid, info.st_gid)

        result = _run_deploy_step(podman, image, pod, artifact)
        assert result.returncode == 0, (f"the deploy step (uid/gid {UID}, no fsGroup) could not put version 1 in "
                                        f"the repository ({oct(info.st_mode)} {info.st_uid}:{info.st_gid}):\n"
                                        + result.stdout[-2000:] + result.stderr[-4000:])
        assert json.loads(result.stdout.strip().splitlines()[-1])["version"] == 1
        client = EmbeddingClient(f"127.0.0.1:{pod['ports']['grpc']}")
        images = np.random.default_rng(0).standard_normal((2, *client.served.contract.input_shape), dtype=np.float32)
        embeddings = client.embed(images)
        assert embeddings.shape[0] == 2 and np.isfinite(embeddings).all()
        # Triton reads what the step wrote as its own user; the step keeps its own uid on what it wrote
        version = repository / "dino" / "1"
        assert version.is_dir() and version.stat().st_uid == UID
