"""`dino-mlops monitoring up|render-k8s|check`: a local Prometheus stack, the k8s manifests, promtool checks."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import tempfile
import time
from pathlib import Path

from dino_model.cli.options import add_renamed, print_result
from dino_model.serving.client import METRICS_PORT

PROMETHEUS_PORT, PUSHGATEWAY_PORT = 9090, 9091
TRITON_METRICS = f"localhost:{METRICS_PORT}"

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("monitoring", help="Prometheus rules, dashboard and a local Prometheus")
    sub = parser.add_subparsers(dest="monitoring_command", required=True, metavar="ACTION")

    up = sub.add_parser("up", help="run Prometheus + Pushgateway on loopback, scraping a local Triton")
    up.add_argument("--triton", action="append", default=None, metavar="HOST:PORT",
                    help=f"Triton metrics endpoint (repeatable; default {TRITON_METRICS})")
    up.add_argument("--target", action="append", default=[], metavar="HOST:PORT",
                    help="a process serving prometheus-client metrics (repeatable)")
    up.add_argument("--prometheus-port", type=int, default=PROMETHEUS_PORT)
    up.add_argument("--pushgateway-port", type=int, default=PUSHGATEWAY_PORT)
    up.add_argument("--scrape-interval", default="5s")
    up.add_argument("--workdir", type=Path, default=None, help="config and TSDB folder (default: a temp folder)")
    up.add_argument("--duration-s", type=float, default=0.0, help="stop after this many seconds (0: until Ctrl-C)")
    up.set_defaults(func=_up)

    render = sub.add_parser("render-k8s", help="write the PrometheusRule and Grafana dashboard ConfigMap")
    add_renamed(render, "--output-dir", "--out-dir", type=Path, default=Path("k8s/base/monitoring"),
                help="folder the manifests are written to")
    render.add_argument("--release", default="kube-prometheus-stack",
                        help="kube-prometheus-stack Helm release (the PrometheusRule `release` label)")
    render.add_argument("--check", action="store_true", help="write nothing; exit 1 when the files are stale")
    render.set_defaults(func=_render)

    check = sub.add_parser("check", help="promtool check rules and check config; optionally test rules")
    check.add_argument("--rules-test", type=Path, action="append", default=[],
                       help="a promtool unit-test file to run (repeatable)")
    check.set_defaults(func=_check)


def _up(args: argparse.Namespace) -> int:
    from dino_model.monitoring.prometheus import run_prometheus, run_pushgateway, write_prometheus_config

    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dino-monitoring-")))
        gateway = f"127.0.0.1:{args.pushgateway_port}"
        config = write_prometheus_config(workdir, triton_targets=args.triton or [TRITON_METRICS],
                                         pushgateway=gateway, platform_targets=args.target,
                                         scrape_interval=args.scrape_interval)
        gateway_url = stack.enter_context(run_pushgateway(port=args.pushgateway_port, log_dir=workdir))
        prometheus_url = stack.enter_context(run_prometheus(config, port=args.prometheus_port,
                                                            storage_dir=workdir / "tsdb"))
        print_result({"prometheus": prometheus_url, "pushgateway": gateway_url, "config": str(config),
                      "push_env": f"DINO_PUSHGATEWAY={gateway}"})
        _wait(args.duration_s)
    return 0


def _wait(duration_s: float) -> None:
    """Block until the duration ends, Ctrl-C or SIGTERM; the context managers then stop the servers."""
    stop = {"now": False}

    def on_term(signum: int, frame: object) -> None:
        stop["now"] = True

    previous = signal.signal(signal.SIGTERM, on_term)
    deadline = time.monotonic() + duration_s if duration_s > 0 else float("inf")
    try:
        while not stop["now"] and time.monotonic() < deadline:
            time.sleep(0.2)
    except KeyboardInterrupt:
        logger.info("interrupted; stopping Prometheus and the Pushgateway")
    finally:
        signal.signal(signal.SIGTERM, previous)


def _render(args: argparse.Namespace) -> int:
    from dino_model.monitoring.k8s import render_k8s, stale_manifests

    if args.check:
        stale = stale_manifests(args.output_dir, release=args.release)
        print_result({"stale": [str(p) for p in stale]})
        if stale:
            logger.error("stale manifests; run `dino-mlops monitoring render-k8s --output-dir %s`", args.output_dir)
        return 1 if stale else 0
    print_result({"written": [str(p) for p in render_k8s(args.output_dir, release=args.release)]})
    return 0


def _check(args: argparse.Namespace) -> int:
    from dino_model.monitoring.prometheus import rules_path, write_prometheus_config
    from dino_model.monitoring.promql import promtool

    with tempfile.TemporaryDirectory(prefix="dino-promcheck-") as tmp:
        config = write_prometheus_config(tmp, triton_targets=[TRITON_METRICS],
                                         pushgateway=f"localhost:{PUSHGATEWAY_PORT}")
        results = {"rules": promtool("check", "rules", rules_path()), "config": promtool("check", "config", config)}
    for test_file in args.rules_test:
        results[f"test {test_file}"] = promtool("test", "rules", test_file)
    print_result(results)
    return 0
