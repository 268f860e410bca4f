"""A local Triton Inference Server: the real `tritonserver` binary, started, awaited and stopped.

By default the binary that ships in the `nvidia-pytriton` wheel runs (Triton 2.51, Python backend
only), which needs three things PLATFORM.md records: a backend directory holding the Python
backend and the stub for the running interpreter, the interpreter's LIBDIR and the wheel's
`nvidia_pytriton.libs` on LD_LIBRARY_PATH, and this environment's `bin/` first on PATH so the stub's
embedded Python finds numpy and onnxruntime. Models load in EXPLICIT mode (the repository API is
live for `dino-mlops deploy`), readiness is awaited on `/v2/health/ready`, and every failure to
start says which port, binary or model is to blame. Usable as a context manager, in tests too.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from dino_model.errors import ConfigError, ServingError

logger = logging.getLogger(__name__)

DEFAULT_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
_HARMLESS = ("CudaDriverHelper", "NVML", "DCGM", "pinned memory", "CUDA driver")


def pytriton_root() -> Path:
    """The installed `pytriton` package folder (located without importing it)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServingError("nvidia-pytriton is not installed, so there is no bundled tritonserver; "
                           "`pip install nvidia-pytriton` or pass --tritonserver PATH")
    return Path(next(iter(spec.submodule_search_locations)))


def free_ports(n: int, address: str = "127.0.0.1") -> list[int]:
    """n distinct ports that were free a moment ago (all sockets are held until all are chosen)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind((address, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class TritonServer:
    """One tritonserver process serving `repository`; `start()` returns once it is ready."""

    def __init__(self, repository: str | Path, *, http_port: int = 8000, grpc_port: int = 8001,
                 metrics_port: int = 8002, address: str = "127.0.0.1", models: Sequence[str] = ("*",),
                 binary: str | Path | None = None, startup_timeout_s: float = 120.0,
                 extra_args: Sequence[str] = ()) -> None:
        self.repository = Path(repository).resolve()
        self.ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
        if len(set(self.ports.values())) != 3:
            raise ConfigError(f"the HTTP, gRPC and metrics ports must differ; got {self.ports}")
        self.address, self.models, self.startup_timeout_s = address, list(models), startup_timeout_s
        self.binary = Path(binary) if binary else pytriton_root() / "tritonserver" / "bin" / "tritonserver"
        self.bundled = binary is None
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen | None = None
        self.workdir: Path | None = None

    @property
    def host(self) -> str:
        return "127.0.0.1" if self.address in ("0.0.0.0", "") else self.address

    @property
    def grpc_url(self) -> str:
        """host:port, without a scheme, as tritonclient.grpc wants it."""
        return f"{self.host}:{self.ports['grpc']}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.ports['http']}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.ports['metrics']}/metrics"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self, backend_dir: Path | None) -> list[str]:
        args = [str(self.binary), f"--model-repository={self.repository}", "--model-control-mode=explicit",
                *(f"--load-model={m}" for m in self.models), "--strict-readiness=true", "--exit-timeout-secs=10",
                "--allow-metrics=true", "--metrics-config=summary_latencies=true"]
        for kind, port in self.ports.items():
            args += [f"--{kind}-port={port}", f"--{kind}-address={self.address}"]
        if backend_dir is not None:
            args.append(f"--backend-directory={backend_dir}")
        return args + self.extra_args

    def start(self) -> TritonServer:
        if self.running:
            return self
        if not self.repository.is_dir():
            raise ServingError(f"model repository {self.repository} does not exist; write one with "
                               "`dino-mlops triton-repo`")
        if not self.binary.is_file():
            raise ServingError(f"tritonserver binary {self.binary} does not exist")
        self._check_ports()
        self.workdir = Path(tempfile.mkdtemp(prefix="dino-triton-"))
        backend_dir = self._python_backend_dir(self.workdir) if self.bundled else None
        log = (self.workdir / "tritonserver.log").open("wb")
        try:
            self.process = subprocess.Popen(self.command(backend_dir), stdout=log, stderr=subprocess.STDOUT,
                                            env=self._environment(), start_new_session=True)
        except OSError as exc:
            raise ServingError(f"cannot run {self.binary}: {exc}") from exc
        finally:
            log.close()
        logger.info("started tritonserver (pid %d) on %s: gRPC %d, HTTP %d, metrics %d", self.process.pid,
                    self.repository, self.ports["grpc"], self.ports["http"], self.ports["metrics"])
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (Triton drains in-flight requests), then SIGKILL of its process group if needed."""
        code = None
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    logger.warning("tritonserver pid %d ignored SIGTERM for %.0f s: killing it", self.process.pid,
                                   timeout_s)
                    os.killpg(self.process.pid, signal.SIGKILL)
                    self.process.wait()
            code = self.process.returncode
            logger.info("tritonserver pid %d stopped (exit code %s)", self.process.pid, code)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        return code

    def log_tail(self, lines: int = 25) -> str:
        """The last log lines, without the start-up tables."""
        path = self.workdir / "tritonserver.log" if self.workdir else None
        if path is None or not path.is_file():
            return ""
        text = path.read_text(errors="replace").splitlines()
        return "\n".join([line for line in text if line.strip() and not line.startswith(("|", "+"))][-lines:])

    def log_errors(self, lines: int = 8) -> str:
        """Error lines of the log (harmless no-GPU complaints left out), else its tail."""
        tail = self.log_tail(400).splitlines()
        errors = [line for line in tail if (line.startswith("E") or "error" in line.lower() or "failed" in line)
                  and not any(h in line for h in _HARMLESS)]
        return "\n".join(errors[-lines:]) or "\n".join(tail[-lines:])

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _check_ports(self) -> None:
        for kind, port in self.ports.items():
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers do not block Triton
                try:
                    s.bind((self.address, port))
                except OSError as exc:
                    raise ServingError(
                        f"{kind} port {port} on {self.address or '0.0.0.0'} is taken ({exc.strerror}); "
                        f"pick another with --{kind}-port or stop the process holding it") from None

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        url = f"{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServingError(f"tritonserver exited with code {self.process.returncode} while starting"
                                   f"{self._diagnosis()}:\n{self.log_errors()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        logger.info("tritonserver ready at %s", self.grpc_url)
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        raise ServingError(f"tritonserver was not ready within {self.startup_timeout_s:.0f} s:\n{self.log_errors()}")

    def _diagnosis(self) -> str:
        tail = self.log_tail(200)
        if "Address already in use" in tail:
            return " because a port is already in use (see --http-port, --grpc-port, --metrics-port)"
        if "backend library for backend 'onnxruntime'" in tail:
            return (" because this tritonserver has no onnxruntime backend: serve the `cpu` flavour "
                    "(dino-mlops triton-repo --flavour cpu) or use NVIDIA's Triton container")
        if "failed to load" in tail or "UNAVAILABLE state" in tail:
            return " because a model failed to load"
        return ""

    def _python_backend_dir(self, workdir: Path) -> Path:
        """<workdir>/backends/python with the wheel's Python backend and the stub for this interpreter."""
        root = pytriton_root() / "tritonserver"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.is_file():
            raise ServingError(f"nvidia-pytriton has no Python backend stub for Python {version} ({stub})")
        target = workdir / "backends" / "python"
        target.mkdir(parents=True)
        for source in (*(root / "backends" / "python").glob("*.*"), stub):
            (target / source.name).symlink_to(source)
        return workdir / "backends"

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        if self.bundled:
            libs = [sysconfig.get_config_var("LIBDIR"), str(pytriton_root().parent / "nvidia_pytriton.libs")]
            env["LD_LIBRARY_PATH"] = os.pathsep.join([*libs, *filter(None, [env.get("LD_LIBRARY_PATH")])])
        return env
