"""Serving speed: Triton's `cpu` flavour against the in-process onnxruntime it wraps, side by side.

The question is what serving costs on top of the runtime: the same exported ONNX file runs in
this process (one onnxruntime session shared by C caller threads, `--threads` intra-op threads)
and behind a real tritonserver (the bundled nvidia-pytriton binary, Python backend running
onnxruntime, C closed-loop gRPC clients in this process). Each cell (batch size x clients) is
measured for both in alternation, round after round, with the order flipped every round, so a
ratio is taken under the same load from the other jobs of a shared machine; the table gives the
median ratio Triton/onnxruntime and its range over the rounds.

A second model in the same server, `noop`, answers zeros of the right shape from a Python backend
that computes nothing: its batch-1 round trip is the floor the gRPC frontend and the Python stub
impose, whatever the model. The server's own statistics (queue, input, compute, output time per
request) say where the rest goes.

On a machine shared with other jobs, wall-clock throughput also measures how the kernel shares the
cores out (a process with more runnable threads gets more of them), so every cell also records the
CPU time spent: this process (callers, gRPC clients) plus, for Triton, every process of the server's
session (tritonserver and its Python stubs). CPU seconds per image is the engines' cost, which
contention barely moves; at saturation on an idle machine, throughput is the cores over that cost.

    .venv/bin/python benchmarks/serving.py                       # tiny test model, 32 px
    .venv/bin/python benchmarks/serving.py --model vit_small     # ViT-S/16 at 224 px (the paper's)
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dino_model.config import load_config
from dino_model.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from dino_model.export.contract import EMBEDDING, INPUT_NAME, ModelContract
from dino_model.export.onnx import EmbeddingModel, export_onnx
from dino_model.models.backbone import build_backbone
from dino_model.runtime.processes import free_ports
from dino_model.serving.server import TritonServer
from dino_model.triton.config import RepositoryOptions
from dino_model.triton.repository import read_config, write_config, write_model_repository

logger = logging.getLogger("benchmarks.serving")

MODELS = {
    "tiny": [],  # the packaged test config: ViT depth 2, width 64, patch 4, 32 px
    "vit_small": ["model.arch=vit_small", "model.patch_size=16", "model.img_size=224", "model.depth=null",
                  "model.embed_dim=null", "model.num_heads=null"],
}
CELLS = {"tiny": ["1x1", "1x8", "32x1", "32x8"], "vit_small": ["1x1", "1x8"]}
NOOP_MODEL = '''
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Answers zeros of the configured shape: the cost of the stub round trip alone."""

    def initialize(self, args):
        self.outputs = [(o["name"], [int(d) for d in o["dims"]]) for o in json.loads(args["model_config"])["output"]]

    def execute(self, requests):
        responses = []
        for request in requests:
            batch = pb_utils.get_input_tensor_by_name(request, "images").as_numpy().shape[0]
            tensors = [pb_utils.Tensor(n, np.zeros((batch, *dims), np.float32)) for n, dims in self.outputs]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
'''


@dataclass
class Run:
    """One closed-loop measurement: per-call latencies (s) of C callers over `seconds`."""

    batch: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    cpu_s: float = 0.0  # CPU seconds spent by the caller and (Triton) the server over the run
    server_cpu_s: float = 0.0  # the server's share of cpu_s

    @property
    def cores_busy(self) -> float:
        return self.cpu_s / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms_per_image(self) -> float:
        images = self.batch * len(self.latencies)
        return self.cpu_s * 1e3 / images if images else float("nan")

    @property
    def images_per_s(self) -> float:
        return self.batch * len(self.latencies) / self.seconds if self.seconds else 0.0

    def p50_ms(self) -> float:
        return float(np.percentile(self.latencies, 50)) * 1e3 if self.latencies else float("nan")


def cpu_seconds(session: int | None = None) -> float:
    """User + system CPU seconds of this process, or of every process of a session (a server and its stubs)."""
    if session is None:
        times = os.times()
        return times.user + times.system
    ticks, total = os.sysconf("SC_CLK_TCK"), 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[3]) == session:  # fields after the name: state ppid pgrp session ... utime(11) stime(12)
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def closed_loop(make_call: Callable[[], Callable[[], object]], *, batch: int, clients: int, seconds: float,
                server_session: int | None = None) -> Run:
    """`clients` threads, each calling its own `make_call()` back to back for `seconds` (after one warm call)."""
    run, lock, start_line = Run(batch), threading.Lock(), threading.Barrier(clients + 1)
    deadline = [0.0]

    def worker() -> None:
        call = make_call()
        call()
        start_line.wait()
        mine = []
        while time.perf_counter() < deadline[0]:
            t0 = time.perf_counter()
            call()
            mine.append(time.perf_counter() - t0)
        with lock:
            run.latencies.extend(mine)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    deadline[0] = time.perf_counter() + 1e9
    start_line.wait()
    server_before = cpu_seconds(server_session) if server_session else 0.0
    cpu_before = cpu_seconds()
    started = time.perf_counter()
    deadline[0] = started + seconds
    for t in threads:
        t.join()
    run.seconds = time.perf_counter() - started
    run.server_cpu_s = (cpu_seconds(server_session) if server_session else 0.0) - server_before
    run.cpu_s = cpu_seconds() - cpu_before + run.server_cpu_s
    return run


def build(model: str, work: Path) -> tuple[Path, ModelContract]:
    """Export a randomly initialised backbone (speed does not depend on the weights)."""
    cfg = load_config("tiny", overrides=MODELS[model])
    backbone, dim = build_backbone(cfg.model, drop_path_rate=0.0)
    size = cfg.model.img_size
    contract = ModelContract(image_size=size, resize_size=size, embed_dim=dim, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                             arch=cfg.model.arch, patch_size=cfg.model.patch_size)
    return export_onnx(EmbeddingModel(backbone.eval()), work / "model.onnx", contract), contract


def write_repository(onnx_path: Path, repo: Path, opts: RepositoryOptions) -> dict:
    """`dino` as `triton-repo --flavour cpu` writes it, and `noop` with the same config around a no-op model.py."""
    write_model_repository(onnx_path, repo, opts)
    config = read_config(repo / opts.model_name)
    noop = dict(config, name="noop")
    noop.pop("model_warmup", None)
    (repo / "noop" / "1").mkdir(parents=True)
    (repo / "noop" / "1" / "model.py").write_text(NOOP_MODEL)
    write_config(repo / "noop", noop)
    return config


def ort_caller(session, x: np.ndarray) -> Callable[[], Callable[[], object]]:
    return lambda: (lambda: session.run([EMBEDDING], {INPUT_NAME: x}))


def triton_caller(url: str, model: str, x: np.ndarray) -> Callable[[], Callable[[], object]]:
    """One tritonclient per thread, as a user's script would hold it; embedding asked for and decoded."""
    import tritonclient.grpc as grpcclient

    def make() -> Callable[[], object]:
        client = grpcclient.InferenceServerClient(url)
        request = grpcclient.InferInput(INPUT_NAME, list(x.shape), "FP32")
        request.set_data_from_numpy(x)
        wanted = [grpcclient.InferRequestedOutput(EMBEDDING)]
        return lambda: client.infer(model, [request], outputs=wanted).as_numpy(EMBEDDING)
    return make


def server_times(url: str, model: str) -> dict[str, float]:
    """Cumulative ns of Triton's per-model statistics, and the request and execution counts."""
    import tritonclient.grpc as grpcclient

    stats = grpcclient.InferenceServerClient(url).get_inference_statistics(model, as_json=True)["model_stats"][0]
    s = stats["inference_stats"]
    out = {k: float(s[k].get("ns", 0)) for k in ("success", "queue", "compute_input", "compute_infer",
                                                   "compute_output")}
    out["requests"] = float(s["success"].get("count", 0))
    out["executions"] = float(stats.get("execution_count", 0))
    return out


def breakdown(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Per-request ms of each server phase between two statistics snapshots."""
    n = max(after["requests"] - before["requests"], 1.0)
    out = {k: (after[k] - before[k]) / n / 1e6 for k in ("success", "queue", "compute_input", "compute_infer",
                                                         "compute_output")}
    out["batch"] = n / max(after["executions"] - before["executions"], 1.0)
    return out


def parse_cells(cells: Sequence[str]) -> list[tuple[int, int]]:
    return [(int(b), int(c)) for b, c in (cell.split("x") for cell in cells)]


def measure(args: argparse.Namespace, onnx_path: Path, contract: ModelContract, work: Path) -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    cells = parse_cells(args.cells or CELLS[args.model])
    opts = RepositoryOptions(flavour="cpu", max_batch_size=max(64, *(b for b, _ in cells)), preferred_batch_sizes=[],
                             entry_points=False,  # the model alone: the ensembles' steps are not measured here
                             **({"instance_count": args.instances} if args.instances else {}),
                             **({"intra_op_threads": args.intra_op_threads} if args.intra_op_threads is not None
                                else {}),
                             **({"max_queue_delay_us": args.queue_delay_us} if args.queue_delay_us is not None
                                else {}))
    config = write_repository(onnx_path, work / "repo", opts)
    logger.info("served config: instances %s, parameters %s, dynamic_batching %s", config["instance_group"],
                {k: v for k, v in config["parameters"].items() if not k.startswith(("dino.", "lineage", "metrics"))},
                config.get("dynamic_batching"))
    rng = np.random.default_rng(0)
    inputs = {b: rng.standard_normal((b, *contract.input_shape), np.float32) for b in {b for b, _ in cells}}
    ratios: dict[tuple[int, int], list[float]] = {cell: [] for cell in cells}
    runs: dict[tuple[str, int, int], list[Run]] = {}
    phases: dict[tuple[str, int, int], list[dict[str, float]]] = {}
    http, grpc, metrics = free_ports(3)
    with TritonServer(work / "repo", http_port=http, grpc_port=grpc, metrics_port=metrics) as server:
        url = server.grpc_url
        for r in range(args.rounds):
            for batch, clients in cells:
                engines = ["onnxruntime", "triton", "noop"] if batch == 1 and clients == 1 else ["onnxruntime",
                                                                                                    "triton"]
                results = {}
                for engine in engines if r % 2 == 0 else engines[::-1]:
                    x = inputs[batch]
                    model = "dino" if engine == "triton" else engine
                    caller = ort_caller(session, x) if engine == "onnxruntime" else triton_caller(url, model, x)
                    before = server_times(url, model) if engine != "onnxruntime" else None
                    results[engine] = closed_loop(caller, batch=batch, clients=clients, seconds=args.seconds,
                                                  server_session=None if before is None else server.process.pid)
                    runs.setdefault((engine, batch, clients), []).append(results[engine])
                    if before is not None:
                        phases.setdefault((engine, batch, clients), []).append(
                            breakdown(before, server_times(url, model)))
                ratio = results["triton"].images_per_s / results["onnxruntime"].images_per_s
                ratios[(batch, clients)].append(ratio)
                ort_run, tri_run = results["onnxruntime"], results["triton"]
                logger.info("round %d, batch %d x %d clients: onnxruntime %.1f images/s (%.2f CPU ms/image), "
                            "triton %.1f (%.2f): %.2fx; load %.1f", r + 1, batch, clients, ort_run.images_per_s,
                            ort_run.cpu_ms_per_image, tri_run.images_per_s, tri_run.cpu_ms_per_image, ratio,
                            os.getloadavg()[0])
    report(args, contract, config, cells, ratios, runs, phases)


def _queue_delay(config: dict) -> str:
    if "dynamic_batching" not in config:
        return "- (no dynamic batching)"
    return f"{config['dynamic_batching'].get('max_queue_delay_microseconds', 0)} us"  # 0 is left out of the JSON


def _client_cpu_ms(run: Run) -> float:
    return (run.cpu_s - run.server_cpu_s) * 1e3 / max(len(run.latencies), 1)


def _server_cpu_ms(run: Run) -> float:
    return run.server_cpu_s * 1e3 / max(len(run.latencies), 1)


def _median(runs: list[Run], what: Callable[[Run], float]) -> float:
    return statistics.median(what(r) for r in runs)


def report(args: argparse.Namespace, contract: ModelContract, config: dict, cells: list[tuple[int, int]],
           ratios: dict, runs: dict, phases: dict) -> None:
    """Markdown tables on stdout: ratios per cell, then where a request's time goes on the server."""
    group = config["instance_group"][0]
    threads = config["parameters"].get("intra_op_threads", {}).get("string_value", "?")
    threads = threads if threads != "0" else "(usable CPUs / instances)"
    print(f"model {args.model} ({contract.arch}/{contract.patch_size}, {contract.image_size} px, "
          f"D={contract.embed_dim}); {len(os.sched_getaffinity(0))} usable CPUs; load average at the end "
          f"{os.getloadavg()[0]:.1f}; {args.rounds} rounds of {args.seconds:g} s per engine and cell; onnxruntime "
          f"{args.threads} thread(s); triton {group.get('count', 1)} instance(s) x {threads} intra-op thread(s), "
          f"queue delay {_queue_delay(config)}\n")
    print("| batch | clients | onnxruntime images/s | triton images/s | triton/onnxruntime images/s (range) "
          "| onnxruntime p50 ms | triton p50 ms | CPU ms/image onnxruntime | CPU ms/image triton "
          "| onnxruntime/triton CPU per image (range) | cores busy onnxruntime | triton |"
          "\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    for batch, clients in cells:
        ort_runs, tri_runs = runs[("onnxruntime", batch, clients)], runs[("triton", batch, clients)]
        got = ratios[(batch, clients)]
        cost = [o.cpu_ms_per_image / t.cpu_ms_per_image for o, t in zip(ort_runs, tri_runs, strict=True)]
        print(f"| {batch} | {clients} | {_median(ort_runs, lambda r: r.images_per_s):.1f} "
              f"| {_median(tri_runs, lambda r: r.images_per_s):.1f} | {statistics.median(got):.2f}x "
              f"({min(got):.2f}-{max(got):.2f}) | {_median(ort_runs, Run.p50_ms):.2f} "
              f"| {_median(tri_runs, Run.p50_ms):.2f} | {_median(ort_runs, lambda r: r.cpu_ms_per_image):.3f} "
              f"| {_median(tri_runs, lambda r: r.cpu_ms_per_image):.3f} | {statistics.median(cost):.2f}x "
              f"({min(cost):.2f}-{max(cost):.2f}) | {_median(ort_runs, lambda r: r.cores_busy):.2f} "
              f"| {_median(tri_runs, lambda r: r.cores_busy):.2f} |")
    print("\n| model | batch | clients | client p50 ms | server ms/request | queue | input | compute | output "
          "| requests/execution | CPU ms/request: client | server |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (engine, batch, clients), got in phases.items():
        med = {k: statistics.median(p[k] for p in got) for k in got[0]}
        p50 = _median(runs[(engine, batch, clients)], Run.p50_ms)
        name = "dino" if engine == "triton" else engine
        print(f"| {name} | {batch} | {clients} | {p50:.2f} | {med['success']:.2f} | {med['queue']:.2f} "
              f"| {med['compute_input']:.2f} | {med['compute_infer']:.2f} | {med['compute_output']:.2f} "
              f"| {med['batch']:.1f} | {_median(runs[(engine, batch, clients)], _client_cpu_ms):.3f} "
              f"| {_median(runs[(engine, batch, clients)], _server_cpu_ms):.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--cells", nargs="+", help="BATCHxCLIENTS cells (default: per model)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per engine, cell and round")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of the in-process session")
    parser.add_argument("--instances", type=int, help="Triton instances (default: the repository's default)")
    parser.add_argument("--intra-op-threads", type=int, help="threads per Triton instance (default: the repository's)")
    parser.add_argument("--queue-delay-us", type=int, help="dynamic batching delay (default: the repository's)")
    parser.add_argument("--onnx", type=Path, help="an exported file to serve instead of a fresh export of --model")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server on the way out
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with tempfile.TemporaryDirectory(prefix="dino-bench-") as tmp:
        work = Path(tmp)
        if args.onnx:
            from dino_model.export.onnx import read_contract

            onnx_path, contract = args.onnx, read_contract(args.onnx)
        else:
            onnx_path, contract = build(args.model, work)
        measure(args, onnx_path, contract, work)


if __name__ == "__main__":
    main()
