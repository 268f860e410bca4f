"""The Deployment's exact Triton command line, run by a real tritonserver.

The nvidia-pytriton wheel ships a real tritonserver (2.51, python backend only). It is started with
the rendered prod-gpu container's args (ports and paths mapped to this machine, a python-backend
stand-in for the ONNX model), to show that the flags parse, that the probe paths answer as the
probes expect, that the metrics the alerts and the autoscaler read are exported, that the
repository API is closed without the admin key, and that a model in the repository that cannot load
keeps the pod from ever becoming ready (every model is loaded at start, with strict readiness).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from k8s_render import expand_env, one

from dino_model.runtime.processes import free_ports

pytestmark = pytest.mark.triton

MODEL_PY = """\
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "images").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("embedding", x + x)]))
        return out
"""
CONFIG = """\
backend: "python"
max_batch_size: 8
input [{ name: "images", data_type: TYPE_FP32, dims: [ 4 ] }]
output [{ name: "embedding", data_type: TYPE_FP32, dims: [ 4 ] }]
instance_group [{ kind: KIND_CPU, count: 1 }]
dynamic_batching { }
"""


def _pytriton_dir() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        pytest.skip("nvidia-pytriton (which ships tritonserver) is not installed")
    return Path(spec.origin).parent




def _get(url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


@pytest.fixture
def triton_command(rendered, tmp_path):
    """A function () -> (argv, env, ports, repository) built from the rendered prod-gpu Deployment."""
    pkg = _pytriton_dir()
    backend = tmp_path / "backends" / "python"
    backend.mkdir(parents=True)
    for item in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy(pkg / "tritonserver" / "backends" / "python" / item, backend)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    shutil.copy(pkg / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub", backend)
    deployment = one(rendered["prod-gpu"], "Deployment", "triton")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    settings = one(rendered["prod-gpu"], "ConfigMap", container["env"][0]["valueFrom"]["configMapKeyRef"]["name"])
    repository = tmp_path / settings["data"]["MODEL_REPOSITORY"].lstrip("/")
    model = repository / settings["data"]["MODEL_NAME"]
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(CONFIG)
    (model / "1" / "model.py").write_text(MODEL_PY)
    # The backend stub must load this interpreter's libpython, so its LIBDIR goes on LD_LIBRARY_PATH, and
    # find its packages: the stub's embedded Python takes its prefix from the `python3` first on PATH, so
    # this environment's bin goes first (else another interpreter's numpy 2 is imported and outputs come
    # back empty).
    libs = f"{sysconfig.get_config_var('LIBDIR')}:{pkg.parent / 'nvidia_pytriton.libs'}"
    env = {**os.environ, "LD_LIBRARY_PATH": libs, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}

    def build():
        ports = {name: free_ports(1)[0] for name in ("http", "grpc", "metrics")}
        values = {"MODEL_REPOSITORY": str(repository), "MODEL_NAME": model.name, "TRITON_ADMIN_KEY": "test-key"}
        args = [expand_env(a, values) for a in container["args"]]
        args = [a.replace("=8000", f"={ports['http']}").replace("=8001", f"={ports['grpc']}")
                .replace("=8002", f"={ports['metrics']}") if a.endswith(("=8000", "=8001", "=8002")) else a
                for a in args]
        exe = pkg / "tritonserver" / "bin" / container["command"][0]
        return [str(exe), *args, f"--backend-directory={backend.parent}"], env, ports, repository

    return build


def test_deployment_args_serve_probe_and_export_metrics(triton_command, tmp_path) -> None:
    argv, env, ports, _ = triton_command()
    log = (tmp_path / "triton.log").open("w")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    http = f"http://127.0.0.1:{ports['http']}"
    try:
        deadline = time.monotonic() + 90
        while _get(f"{http}/v2/health/ready")[0] != 200:
            assert proc.poll() is None, (tmp_path / "triton.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "tritonserver never became ready"
            time.sleep(0.5)
        assert _get(f"{http}/v2/health/live")[0] == 200
        body = json.dumps({"inputs": [{"name": "images", "shape": [1, 4], "datatype": "FP32",
                                       "data": [1.0, 2.0, 3.0, 4.0]}]}).encode()
        status, text = _get(f"{http}/v2/models/dino/infer", data=body)
        assert status == 200, text
        assert json.loads(text)["outputs"][0]["data"] == [2.0, 4.0, 6.0, 8.0]
        _, metrics = _get(f"http://127.0.0.1:{ports['metrics']}/metrics")
        assert 'nv_inference_request_success{model="dino",version="1"} 1' in metrics
        assert "nv_inference_queue_duration_us{" in metrics  # the autoscaler's series
        assert 'nv_inference_request_summary_us{model="dino",version="1",quantile="0.99"}' in metrics  # p99 alert
        # the repository API (load/unload) is closed to callers without the admin key
        assert _get(f"{http}/v2/repository/index", data=b"{}")[0] == 403
        status, index = _get(f"{http}/v2/repository/index", data=b"{}", headers={"admin-key": "test-key"})
        assert status == 200 and json.loads(index)[0]["state"] == "READY"
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


def test_a_model_that_cannot_load_never_becomes_ready(triton_command, tmp_path) -> None:
    argv, env, ports, repository = triton_command()
    broken = repository / "broken"
    (broken / "1").mkdir(parents=True)
    (broken / "config.pbtxt").write_text(CONFIG)
    (broken / "1" / "model.py").write_text("raise RuntimeError('this model cannot load')\n")
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "broken" in out and "failed to load" in out
