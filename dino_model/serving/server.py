"""A local Triton Inference Server: the real `tritonserver` binary, started, awaited and stopped.

By default the binary that ships in the `nvidia-pytriton` wheel runs (Triton 2.51, Python backend
only), which needs three things: a backend directory holding the Python backend and the stub for
the running interpreter (a copy, which the backend may make executable), the interpreter's LIBDIR
(libpython) and the wheel's `nvidia_pytriton.libs` on LD_LIBRARY_PATH, and this environment's `bin/`
first on PATH so the stub's embedded Python finds numpy and onnxruntime. Models load in EXPLICIT
mode (the repository API is live for `dino-mlops deploy`), readiness is awaited on
`/v2/health/ready`, and every failure to start says which port, binary or model is to blame.
Usable as a context manager, in tests too.

Model control is code execution: a load request may carry a config and a `model.py` inline, which
the Python backend then runs as this user. So every server started here restricts Triton's
repository, shared-memory, trace and logging APIs (HTTP and gRPC) to callers sending the admin key
in the `admin-key` header (gRPC: `triton-grpc-protocol-admin-key`), as the cluster's Triton does
(k8s/base/triton). Health, metadata, inference and statistics stay open. Without a given key, each
start generates one and writes it, mode 0600, beside the repository (`<repository>.admin-key`),
where `deploy` and `release` find it; binding a non-loopback address needs a key given by the
operator. Triton reads the key only from its command line, which every local user may read, so the
server gets a placeholder there and the key through a preloaded library (argv_secret.py).

Once ready, a server finishes any deploy of its repository that was killed midway (rollout.
recover_repository, with its own admin key), so a restart brings the repository back to one
version without a person running `dino-mlops deploy --recover`.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Sequence
from pathlib import Path

from dino_model.errors import ConfigError, ServingError
from dino_model.runtime import processes
from dino_model.serving import argv_secret
from dino_model.serving.admin_key import (
    ADMIN_HEADER,
    ADMIN_KEY_ENV,
    admin_headers,
    admin_key_path,
    check_admin_key,
    check_key_strength,
    write_admin_key,
)
from dino_model.serving.client import GRPC_PORT, HTTP_PORT, METRICS_PORT
from dino_model.triton.ensemble import EntryPoints

logger = logging.getLogger(__name__)

RESTRICTED_APIS = "model-repository,shared-memory,trace,logging"
_RESTRICTION_FLAGS = ("--http-restricted-api", "--grpc-restricted-protocol")
_HARMLESS = ("CudaDriverHelper", "NVML", "DCGM", "pinned memory", "CUDA driver")


def pytriton_root() -> Path:
    """The installed `pytriton` package folder (located without importing it)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServingError("nvidia-pytriton is not installed, so there is no bundled tritonserver; "
                           "`pip install nvidia-pytriton` or pass --tritonserver PATH")
    return Path(next(iter(spec.submodule_search_locations)))


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost; False for wildcards (0.0.0.0, ::, "") and other hosts."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _check_no_restriction_flags(extra_args: Sequence[str]) -> None:
    for arg in extra_args:
        if arg.split("=", 1)[0] in _RESTRICTION_FLAGS:
            raise ConfigError(f"{arg.split('=', 1)[0]} is set by the server itself (Triton refuses it twice); "
                              "pass the key as admin_key instead")


class TritonServer:
    """One tritonserver process serving `repository`; `start()` returns once it is ready."""

    def __init__(self, repository: str | Path, *, http_port: int = HTTP_PORT, grpc_port: int = GRPC_PORT,
                 metrics_port: int = METRICS_PORT, address: str = "127.0.0.1", models: Sequence[str] = ("*",),
                 binary: str | Path | None = None, startup_timeout_s: float = 120.0,
                 extra_args: Sequence[str] = (), admin_key: str | None = None, log_to_stderr: bool = False) -> None:
        """`admin_key` opens the restricted APIs; None generates one per start, written to admin_key_path().
        `log_to_stderr`: tritonserver's log on this process's stderr instead of a file in its work folder."""
        if admin_key is None and not is_loopback(address):
            raise ConfigError(f"serving on {address or '0.0.0.0'} would open Triton's model control (which runs "
                              f"uploaded code) to the network: give an admin key with --admin-key-file or "
                              f"${ADMIN_KEY_ENV}, or bind 127.0.0.1")
        if admin_key is not None:
            check_admin_key(admin_key)
            if not is_loopback(address):
                check_key_strength(admin_key)
        _check_no_restriction_flags(extra_args)
        self.repository = Path(repository).resolve()
        self.ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
        if len(set(self.ports.values())) != 3:
            raise ConfigError(f"the HTTP, gRPC and metrics ports must differ; got {self.ports}")
        self.address, self.models, self.startup_timeout_s = address, list(models), startup_timeout_s
        self.binary = Path(binary) if binary else pytriton_root() / "tritonserver" / "bin" / "tritonserver"
        self.bundled = binary is None
        self.extra_args = list(extra_args)
        self.log_to_stderr = log_to_stderr
        self.admin_key = admin_key
        self.generated_key = admin_key is None
        self.key_file: Path | None = None  # written by start() when the key is generated
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
    def admin_headers(self) -> dict[str, str] | None:
        """gRPC metadata that opens this server's restricted APIs (known once started)."""
        return admin_headers(self.admin_key)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self, backend_dir: Path | None, *, key: str | None = None) -> list[str]:
        """tritonserver's argv; `key` stands where the admin key goes (default: the key itself)."""
        args = [str(self.binary), f"--model-repository={self.repository}", "--model-control-mode=explicit",
                *(f"--load-model={m}" for m in self._models_to_load()), "--strict-readiness=true",
                "--exit-timeout-secs=10", "--allow-metrics=true", "--metrics-config=summary_latencies=true"]
        for kind, port in self.ports.items():
            args += [f"--{kind}-port={port}", f"--{kind}-address={self.address}"]
        if backend_dir is not None:
            args.append(f"--backend-directory={backend_dir}")
        if self.admin_key:
            restriction = f"{RESTRICTED_APIS}:{ADMIN_HEADER}={key or self.admin_key}"
            args += [f"--http-restricted-api={restriction}", f"--grpc-restricted-protocol={restriction}"]
        return args + self.extra_args

    def _models_to_load(self) -> list[str]:
        """The models asked for, each with the entry points the repository holds for it (ensemble.py)."""
        if "*" in self.models:
            return ["*"]
        extra = [name for model in self.models for name in EntryPoints(model).all
                 if (self.repository / name).is_dir() and name not in self.models]
        return [*self.models, *extra]

    def start(self) -> TritonServer:
        if self.running:
            return self
        if not self.repository.is_dir():
            raise ServingError(f"model repository {self.repository} does not exist; write one with "
                               "`dino-mlops triton-repo`")
        if not self.binary.is_file():
            raise ServingError(f"tritonserver binary {self.binary} does not exist")
        self._check_ports()
        if self.generated_key:
            self.admin_key = secrets.token_urlsafe(32)
            self.key_file = write_admin_key(admin_key_path(self.repository), self.admin_key)
            logger.info("repository API restricted; admin key written to %s", self.key_file)
        else:
            self._remove_stale_key_file()
        self.workdir = Path(tempfile.mkdtemp(prefix="dino-triton-"))
        backend_dir = self._python_backend_dir(self.workdir) if self.bundled else None
        # in a container the log belongs on stderr (`kubectl logs`); else in a file read for diagnoses
        log = sys.stderr.fileno() if self.log_to_stderr else (self.workdir / "tritonserver.log").open("wb")
        command, env = self._launch(backend_dir)
        try:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
        except OSError as exc:
            self.stop()  # removes the work folder and the generated key file
            raise ServingError(f"cannot run {self.binary}: {exc}") from exc
        finally:
            if not isinstance(log, int):
                log.close()
        logger.info("started tritonserver (pid %d) on %s: gRPC %d, HTTP %d, metrics %d", self.process.pid,
                    self.repository, self.ports["grpc"], self.ports["http"], self.ports["metrics"])
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self._finish_interrupted_deploys()
        return self

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (Triton drains in-flight requests), then SIGKILL of its process group if needed."""
        code = None
        if self.process is not None:
            code = processes.stop(self.process, timeout_s=timeout_s, group=True)
            logger.info("tritonserver pid %d stopped (exit code %s)", self.process.pid, code)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        self._remove_key_file()
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

    def _finish_interrupted_deploys(self) -> None:
        """Roll forward or back a deploy of this repository that was killed (rollout.recover), now, not when a
        person notices. Its journal's pinned config.pbtxt already kept untested versions unloaded; a recovery
        that fails (another deploy holds the lock, a reload fails) is logged, and the server keeps serving."""
        from dino_model.serving.rollout import recover_repository, unfinished

        if not unfinished(self.repository):
            return
        try:
            for result in recover_repository(self.repository, url=self.grpc_url, models=self.models,
                                             headers=self.admin_headers):
                logger.warning("finished an interrupted deploy of %s at start-up: %s", result["model"],
                               result["action"])
        except (ServingError, ConfigError) as exc:
            logger.error("an interrupted deploy in %s is not finished (%s); run `dino-mlops deploy --recover`",
                         self.repository, exc)

    def _remove_stale_key_file(self) -> None:
        """A key file beside the repository that is not this server's key would mislead clients: remove it."""
        path = admin_key_path(self.repository)
        try:
            stale = path.is_file() and path.read_text().strip() != self.admin_key
            if stale:
                path.unlink()
                logger.warning("removed %s: it held another server's admin key", path)
        except OSError as exc:
            logger.warning("cannot remove the stale admin key file %s (%s)", path, exc.strerror)

    def _remove_key_file(self) -> None:
        """Remove the generated key file unless a later server on the same repository has replaced it."""
        if self.key_file is None:
            return
        try:
            if self.key_file.read_text().strip() == self.admin_key:
                self.key_file.unlink()
        except OSError:
            pass
        self.key_file = None

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
        reason = processes.wait_ready(self.process, f"{self.http_url}/v2/health/ready",
                                      timeout_s=self.startup_timeout_s)
        if reason is None:
            logger.info("tritonserver ready at %s", self.grpc_url)
        elif self.process.poll() is not None:
            raise ServingError(f"tritonserver {reason} while starting{self._diagnosis()}:\n{self.log_errors()}")
        else:
            raise ServingError(f"tritonserver {reason}:\n{self.log_errors()}")

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
        for source in (root / "backends" / "python").glob("*.*"):
            (target / source.name).symlink_to(source)
        # a copy: the backend makes the stub executable, which a read-only install (an image) forbids
        shutil.copy(stub, target / stub.name)
        (target / stub.name).chmod(0o755)
        return workdir / "backends"

    def _launch(self, backend_dir: Path | None) -> tuple[list[str], dict[str, str]]:
        """Command and environment, the admin key kept out of the command line where possible (argv_secret)."""
        env = self._environment()
        library = argv_secret.build_preload(self.workdir) if self.admin_key else None
        if library is None:
            return self.command(backend_dir), env
        return (self.command(backend_dir, key=argv_secret.PLACEHOLDER),
                argv_secret.hidden_environment(env, library, self.admin_key))

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        if self.bundled:
            libs = [sysconfig.get_config_var("LIBDIR"), str(pytriton_root().parent / "nvidia_pytriton.libs")]
            env["LD_LIBRARY_PATH"] = os.pathsep.join([*libs, *filter(None, [env.get("LD_LIBRARY_PATH")])])
        return env
