"""A local Prometheus and Pushgateway: the config file, and the real processes as context managers.

Prometheus scrapes Triton's metrics port (:8002, /metrics), the Pushgateway that batch
jobs push to (with `honor_labels: true`, so pushed `job` labels survive) and any process that
serves prometheus-client metrics itself, and evaluates rules.yml, the same rules the Kubernetes
PrometheusRule carries. Debian's `prometheus` and `prometheus-pushgateway` start no service here,
so these helpers run them on loopback ports with their own config and storage, wait for `/-/ready`
and stop them cleanly. Tests and `dino-mlops monitoring up` share them.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path

import yaml

from dino_model.errors import ServingError
from dino_model.runtime import processes

logger = logging.getLogger(__name__)

PROMETHEUS_BINARY = "prometheus"
PUSHGATEWAY_BINARY = "prometheus-pushgateway"
PROMTOOL_BINARY = "promtool"
APT_PACKAGES = "prometheus prometheus-pushgateway"
TRITON_JOB = "triton"  # rules.yml selects Triton targets with job=~".*triton.*"


def rules_path() -> Path:
    """The packaged rules.yml: the one source of the alerting and recording rules."""
    return Path(str(resources.files("dino_model.monitoring") / "rules.yml"))


def dashboard_path() -> Path:
    """The packaged Grafana dashboard JSON."""
    return Path(str(resources.files("dino_model.monitoring") / "dashboard.json"))


def find_binary(name: str) -> str:
    """The absolute path of a Prometheus tool, or ServingError saying how to install it."""
    path = shutil.which(name)
    if path is None:
        raise ServingError(f"'{name}' is not on PATH; install Debian's packages with "
                           f"`apt-get update && apt-get install -y {APT_PACKAGES}`")
    return path


def prometheus_config(*, triton_targets: Sequence[str], pushgateway: str | None = None,
                      platform_targets: Sequence[str] = (), scrape_interval: str = "15s",
                      rule_files: Sequence[str] = ("rules.yml",)) -> dict:
    """The Prometheus configuration as a dict (targets are host:port)."""
    scrape_configs = [{"job_name": TRITON_JOB, "static_configs": [{"targets": list(triton_targets)}]}]
    if pushgateway:
        scrape_configs.append({"job_name": "pushgateway", "honor_labels": True,
                               "static_configs": [{"targets": [pushgateway]}]})
    if platform_targets:
        scrape_configs.append({"job_name": "dino-platform", "static_configs": [{"targets": list(platform_targets)}]})
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval,
                   "external_labels": {"monitor": "dino-mlops"}},
        "rule_files": list(rule_files),
        "scrape_configs": scrape_configs,
    }


def write_prometheus_config(directory: str | Path, *, triton_targets: Sequence[str], pushgateway: str | None = None,
                            platform_targets: Sequence[str] = (), scrape_interval: str = "15s") -> Path:
    """Write `prometheus.yml` plus a copy of rules.yml into `directory`; returns the config path.

    The directory is self-contained, so `promtool check config` validates the rules too.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(rules_path(), directory / "rules.yml")
    config = prometheus_config(triton_targets=triton_targets, pushgateway=pushgateway,
                               platform_targets=platform_targets, scrape_interval=scrape_interval)
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@contextlib.contextmanager
def run_prometheus(config: str | Path, *, port: int, storage_dir: str | Path | None = None,
                   ready_timeout_s: float = 60.0) -> Iterator[str]:
    """Run Debian's `prometheus` on 127.0.0.1:port with `config`; yields its base URL."""
    with contextlib.ExitStack() as stack:
        storage = storage_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="dino-prometheus-"))
        Path(storage).mkdir(parents=True, exist_ok=True)
        args = [find_binary(PROMETHEUS_BINARY), f"--config.file={config}", f"--storage.tsdb.path={storage}",
                f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle", "--log.level=warn"]
        yield stack.enter_context(_server(args, port=port, log=Path(storage) / "prometheus.log",
                                          ready_timeout_s=ready_timeout_s))


@contextlib.contextmanager
def run_pushgateway(*, port: int, log_dir: str | Path | None = None, ready_timeout_s: float = 30.0) -> Iterator[str]:
    """Run Debian's `prometheus-pushgateway` on 127.0.0.1:port (in memory); yields its base URL.

    Debian's build persists to /var/lib/prometheus/pushgateway.data by default, which every gateway on
    the machine would then share (and reload): persistence is switched off explicitly.
    """
    with contextlib.ExitStack() as stack:
        logs = log_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="dino-pushgateway-"))
        args = [find_binary(PUSHGATEWAY_BINARY), f"--web.listen-address=127.0.0.1:{port}", "--persistence.file=",
                "--log.level=warn"]
        yield stack.enter_context(_server(args, port=port, log=Path(logs) / "pushgateway.log",
                                          ready_timeout_s=ready_timeout_s))


@contextlib.contextmanager
def _server(args: list[str], *, port: int, log: Path, ready_timeout_s: float) -> Iterator[str]:
    url = f"http://127.0.0.1:{port}"
    name = Path(args[0]).name
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as log_file:
        process = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            reason = processes.wait_ready(process, f"{url}/-/ready", timeout_s=ready_timeout_s, poll_s=0.2)
            if reason is not None:
                raise ServingError(f"{name} {reason} before it was ready; its log ({log}) ends with: {_tail(log)}")
            logger.info("%s ready at %s (pid %d)", name, url, process.pid)
            yield url
        finally:
            processes.stop(process)  # SIGTERM: Prometheus flushes its head block


def _tail(log: Path, n: int = 5) -> str:
    try:
        lines = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(lines[-n:]) or "(empty log)"
