"""The dev overlay's Triton Deployment, as rendered, played by podman with the project image; models put in
service by the pipeline's own deploy step; gRPC answered outside the pod; a second version rolled out under
load with zero failed requests.

The deploy step is `components.deploy.deploy_to_triton`, run as KFP runs it on the cluster: in the project
image, as uid 10001 on a read-only root filesystem, with the claim `triton-models` mounted read-write at
/models, the admin key from the Secret in $TRITON_ADMIN_KEY, and the ONNX artifact (with the metadata
export_onnx records) at its path. Triton's pod mounts the same claim read-only; the only thing they share
is that volume and Triton's gRPC port.

Transformation of the rendered manifests for `podman kube play --network slirp4netns` (everything else as
rendered: image, command, args, env, securityContext, probes, emptyDirs, mounts):
- the Deployment gets a unique name; its claim `triton-models` names a podman volume created first (unique
  per test); the Secret `triton-admin-key-<hash>` becomes a podman secret of a unique name holding the dev
  overlay's key (podman 4.3 plays no `kind: Secret`);
- each container port gets a hostPort (a free port on the host), the only way in from the host;
- `$(VAR)` references in args are expanded from the container's ConfigMap env, as the kubelet does
  (podman 4.3 passes them on literally);
- the init container runs first with `podman run` (its image, command, env, user and mount as rendered),
  and the pod is played without it: podman 4.3 fails to remove a finished init container ("cannot
  remove container ... as it is running") and gives up the pod;
- the claim's root is owned by uid 10001, which the pod's `fsGroup` provides on a cluster;
- the memory-backed emptyDir (`/dev/shm`, where the Python backend puts its shared memory) becomes a host
  folder with mode 1777: the kubelet makes emptyDirs world-writable, podman 4.3 mounts a root-owned one.
"""

from __future__ import annotations

import base64
import copy
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from dino_model.runtime.processes import free_ports

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


def _render() -> list[Resource]:
    kubectl = REPO_ROOT / ".venv" / "bin" / "kubectl"
    out = subprocess.run([str(kubectl if kubectl.exists() else "kubectl"), "kustomize",
                          str(REPO_ROOT / "k8s" / "overlays" / "dev")], check=True, capture_output=True, text=True)
    return list(yaml.safe_load_all(out.stdout))




def _played(rendered: list[Resource], tag: str, *, claim: str, secret: str, shm: Path
            ) -> tuple[list[Resource], dict, Resource, Resource]:
    """The Deployment and its ConfigMap, transformed as the module docstring says; ports, Secret, init container."""
    deployment = copy.deepcopy(next(d for d in rendered if d["kind"] == "Deployment"
                                    and d["metadata"]["name"] == "triton"))
    deployment["metadata"]["name"] = f"triton-{tag}"
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    settings_name = secret_name = None
    for env in container["env"]:
        source = env.get("valueFrom", {})
        if "configMapKeyRef" in source:
            settings_name = source["configMapKeyRef"]["name"]
        if "secretKeyRef" in source:
            secret_name = source["secretKeyRef"]["name"]
            source["secretKeyRef"]["name"] = secret
    rendered_secret = next(d for d in rendered if d["kind"] == "Secret" and d["metadata"]["name"] == secret_name)
    ports = {}
    for port in container["ports"]:
        port["hostPort"] = ports[port["name"]] = free_ports(1)[0]
    for volume in pod["volumes"]:
        if volume.get("persistentVolumeClaim", {}).get("claimName") == "triton-models":
            volume["persistentVolumeClaim"]["claimName"] = claim
        if volume.get("emptyDir", {}).get("medium") == "Memory":
            del volume["emptyDir"]
            volume["hostPath"] = {"path": str(shm), "type": "Directory"}
    settings = next(d for d in rendered if d["kind"] == "ConfigMap" and d["metadata"]["name"] == settings_name)
    values = {e["name"]: settings["data"][e["valueFrom"]["configMapKeyRef"]["key"]] for e in container["env"]
              if "configMapKeyRef" in e.get("valueFrom", {})}
    container["args"] = [re.sub(r"\$\((\w+)\)", lambda m: values.get(m[1], m[0]), arg) for arg in container["args"]]
    (init,) = pod.pop("initContainers")
    return [settings, deployment], ports, rendered_secret, init


def _run_init_container(podman: Podman, init: Resource, settings: Resource, claim: str, user: str) -> None:
    """The rendered init container, run to completion as the kubelet does before the pod's containers."""
    env = [f"{e['name']}={settings['data'][e['valueFrom']['configMapKeyRef']['key']]}" for e in init["env"]]
    (mount,) = init["volumeMounts"]
    result = podman("run", "--rm", f"--user={user}", "--read-only", "--network=none",
                    *(arg for item in env for arg in ("-e", item)), "-v", f"{claim}:{mount['mountPath']}",
                    "--entrypoint", init["command"][0], init["image"], *init["command"][1:], timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.fixture
def triton_pod(podman: Podman, tmp_path: Path) -> Iterator[dict]:
    """The played Deployment, ready; removed with its volume and secret afterwards."""
    tag = uuid.uuid4().hex[:8]
    claim, secret = f"triton-models-{tag}", f"triton-admin-key-{tag}"
    shm = Path(tempfile.mkdtemp(prefix=f"triton-{tag}-shm-"))
    shm.chmod(0o1777)
    played, ports, rendered_secret, init = _played(_render(), tag, claim=claim, secret=secret, shm=shm)
    key = base64.b64decode(rendered_secret["data"]["admin-key"]).decode()
    assert podman("volume", "create", claim).returncode == 0
    os.chown(podman("volume", "inspect", "--format", "{{.Mountpoint}}", claim).stdout.strip(), UID, UID)
    pod_spec = played[1]["spec"]["template"]["spec"]
    user = f"{pod_spec['securityContext']['runAsUser']}:{pod_spec['securityContext']['runAsGroup']}"
    _run_init_container(podman, init, played[0], claim, user)
    secret_file = tmp_path / "secret.json"
    secret_file.write_text(json.dumps(rendered_secret["data"]))
    assert podman("secret", "create", secret, str(secret_file)).returncode == 0
    file = tmp_path / "triton.yaml"
    file.write_text(yaml.safe_dump_all(played))
    try:
        result = podman("kube", "play", "--network", "slirp4netns", str(file), timeout=180)
        assert result.returncode == 0, result.stderr
        container = f"triton-{tag}-pod-0-tritonserver"
        _wait_ready(podman, container, ports["http"])
        yield {"ports": ports, "key": key, "claim": claim, "container": container,
               "repository": next(d for d in played if d["kind"] == "ConfigMap")["data"]["MODEL_REPOSITORY"]}
    finally:
        logs = podman("logs", f"triton-{tag}-pod-0-tritonserver")
        logger.info("triton pod log tail:\n%s", (logs.stdout + logs.stderr)[-3000:])
        podman("kube", "down", str(file), timeout=120)
        podman("pod", "rm", "-f", f"triton-{tag}-pod-0")
        podman("volume", "rm", "-f", claim)
        podman("secret", "rm", secret)
        shutil.rmtree(shm, ignore_errors=True)


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


def _deploy_step(podman: Podman, image: str, pod: dict, artifact: tuple[Path, dict]) -> int:
    """The pipeline's deploy step in its own container; returns the version it put in service."""
    folder, metadata = artifact
    result = podman(
        "run", "--rm", "--network=host", f"--user={UID}:{UID}", "--read-only", "--tmpfs", "/tmp",
        "-e", "HOME=/tmp", "-e", f"TRITON_ADMIN_KEY={pod['key']}",
        "-v", f"{pod['claim']}:/models", "-v", f"{folder}:/artifact:ro",
        image, "python", "-c", DEPLOY_STEP, json.dumps(metadata), pod["repository"],
        f"127.0.0.1:{pod['ports']['grpc']}", timeout=300)
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
