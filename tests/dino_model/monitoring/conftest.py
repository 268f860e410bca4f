"""Fixtures for the monitoring tests: Debian's Prometheus tools and one real stack per session.

Without the `prometheus` / `promtool` / `prometheus-pushgateway` binaries the tests that need them
skip with the apt command to run, unless DINO_REQUIRE_PROMETHEUS=1 (CI), where they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dino_model.runtime import processes
from dino_model.runtime.processes import free_ports


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = (f"'{name}' is not installed (apt-get update && apt-get install -y prometheus "
                   "prometheus-pushgateway)")
        if os.environ.get("DINO_REQUIRE_PROMETHEUS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def promtool_bin() -> str:
    return require_binary("promtool")


@pytest.fixture(scope="session")
def prometheus_bins() -> tuple[str, str]:
    """(prometheus, prometheus-pushgateway) paths, or a skip saying how to install them."""
    return require_binary("prometheus"), require_binary("prometheus-pushgateway")


@pytest.fixture
def port_factory() -> Callable[[], int]:
    """Hands out free loopback ports, one per call."""
    return lambda: free_ports(1)[0]


@dataclass
class Stack:
    prometheus: str  # base URL
    gateway: str  # host:port for pushing
    triton_metrics_port: int  # scraped as job "triton"; nothing listens until a test starts Triton
    config: Path


@pytest.fixture(scope="session")
def stack(prometheus_bins: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A real Pushgateway and Prometheus (1 s scrapes and rule evaluations) for the whole session."""
    from dino_model.monitoring.prometheus import run_prometheus, run_pushgateway, write_prometheus_config

    work = tmp_path_factory.mktemp("prometheus")
    gateway_port, prometheus_port, triton_port = free_ports(1)[0], free_ports(1)[0], free_ports(1)[0]
    gateway = f"127.0.0.1:{gateway_port}"
    config = write_prometheus_config(work, triton_targets=[f"127.0.0.1:{triton_port}"], pushgateway=gateway,
                                     scrape_interval="1s")
    with run_pushgateway(port=gateway_port, log_dir=work), \
            run_prometheus(config, port=prometheus_port, storage_dir=work / "tsdb") as prometheus:
        yield Stack(prometheus=prometheus, gateway=gateway, triton_metrics_port=triton_port, config=config)


# A Python-backend model whose output is its input; negative inputs raise, which Triton counts as
# nv_inference_request_failure{reason="BACKEND"}. The output goes through DLPack because the
# backend stub embeds the base interpreter, whose numpy may differ from the venv's (numpy 2 there
# makes Tensor(name, ndarray) report a size mismatch).
IDENTITY_MODEL = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            tensor = pb_utils.get_input_tensor_by_name(request, "INPUT0")
            if (tensor.as_numpy() < 0).any():
                raise pb_utils.TritonModelException("negative input")
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor.from_dlpack("OUTPUT0", tensor.to_dlpack())]))
        return responses
'''
IDENTITY_CONFIG = '''name: "identity"
backend: "python"
max_batch_size: 8
input [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ 4 ] } ]
output [ { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ 4 ] } ]
instance_group [ { kind: KIND_CPU, count: 1 } ]
'''


@pytest.fixture(scope="session")
def triton(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real tritonserver shipped by nvidia-pytriton, metrics on the port Prometheus scrapes.

    Started with --metrics-config summary_latencies=true so the p99 summary exists. Yields the
    HTTP URL (host:port).
    """
    try:
        import pytriton
    except ImportError:
        pytest.skip("nvidia-pytriton (which ships tritonserver) is not installed")
    # The stub embeds the base interpreter in isolated mode (PYTHONPATH and the venv are ignored),
    # and triton_python_backend_utils imports numpy: the base interpreter needs its own numpy.
    base = getattr(sys, "_base_executable", sys.executable)
    if subprocess.run([base, "-I", "-c", "import numpy"], capture_output=True, check=False).returncode != 0:
        pytest.skip(f"the Python backend stub runs {base}, which cannot import numpy ({base} -m pip install numpy)")
    server = Path(pytriton.__file__).parent / "tritonserver"
    work = tmp_path_factory.mktemp("triton")
    (work / "repo" / "identity" / "1").mkdir(parents=True)
    (work / "repo" / "identity" / "config.pbtxt").write_text(IDENTITY_CONFIG)
    (work / "repo" / "identity" / "1" / "model.py").write_text(IDENTITY_MODEL)
    backend = work / "backends" / "python"
    backend.mkdir(parents=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy(server / "backends" / "python" / name, backend / name)
    stub = server / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}"
    shutil.copy(stub / "triton_python_backend_stub", backend / "triton_python_backend_stub")
    libs = Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs"
    env = {**os.environ, "LD_LIBRARY_PATH": f"{sysconfig.get_config_var('LIBDIR')}:{libs}"}
    http_port, grpc_port = free_ports(1)[0], free_ports(1)[0]
    args = [str(server / "bin" / "tritonserver"), f"--model-repository={work / 'repo'}",
            f"--backend-directory={work / 'backends'}", f"--http-port={http_port}", f"--grpc-port={grpc_port}",
            f"--metrics-port={stack.triton_metrics_port}", "--allow-gpu-metrics=false",
            "--metrics-config=summary_latencies=true", "--log-verbose=0", "--exit-timeout-secs=5"]
    log = work / "triton.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        try:
            _wait_ready(process, f"http://127.0.0.1:{http_port}/v2/health/ready", log)
            yield f"127.0.0.1:{http_port}"
        finally:
            processes.stop(process)


def _wait_ready(process: subprocess.Popen, url: str, log: Path, timeout_s: float = 90.0) -> None:
    reason = processes.wait_ready(process, url, timeout_s=timeout_s, poll_s=0.3)
    if reason is not None:
        pytest.fail(f"tritonserver {reason}: {log.read_text(errors='replace')[-2000:]}")
