"""Serving speed: PyTorch eager vs in-process onnxruntime vs Triton over gRPC, on one model and batch sizes.

The model is the exported embedding graph (L2-normalised CLS) of a randomly initialised backbone:
speed does not depend on the weights. Rows:

- `pytorch` / `onnxruntime`: one caller, back-to-back batches, in this process;
- `triton`: one gRPC client, back-to-back requests of the batch size (a `cpu` repository: Python
  backend running onnxruntime, as served by the tritonserver in nvidia-pytriton);
- `triton dyn-batch` / `triton no-batch`: C closed-loop clients sending single images, with and
  without dynamic batching (same model, same server), which is where the batcher earns its keep.

Latency percentiles are per call (a whole batch), images/s counts images. Every engine computes with
`--threads` threads (default 1). Numbers go to docs/serving.md.

    .venv/bin/python benchmarks/serving.py                       # tiny test model, 32 px
    .venv/bin/python benchmarks/serving.py --model vit_small     # ViT-S/16 at 224 px (the paper's)
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from dino_model.config import load_config
from dino_model.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from dino_model.export.contract import ModelContract
from dino_model.export.onnx import EmbeddingModel, export_onnx
from dino_model.models.backbone import build_backbone
from dino_model.runtime.processes import free_ports
from dino_model.serving.client import EmbeddingClient
from dino_model.serving.loadtest import run_load_test
from dino_model.serving.server import TritonServer
from dino_model.triton.config import RepositoryOptions
from dino_model.triton.repository import write_model_repository

MODELS = {
    "tiny": [],  # the packaged test config: ViT depth 2, width 64, patch 4, 32 px
    "vit_small": ["model.arch=vit_small", "model.patch_size=16", "model.img_size=224", "model.depth=null",
                  "model.embed_dim=null", "model.num_heads=null"],
}


def latencies(fn: Callable[[], object], *, warmup: int, seconds: float, min_calls: int = 5) -> list[float]:
    """Wall-clock seconds of back-to-back calls, after warm-up, for about `seconds` (at least min_calls)."""
    for _ in range(warmup):
        fn()
    out: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(out) < min_calls:
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def row(engine: str, batch: int, clients: int, lat_s: list[float], images_per_s: float | None = None) -> dict:
    lat_ms = np.asarray(lat_s) * 1e3
    ips = images_per_s if images_per_s is not None else batch * len(lat_s) / float(np.sum(lat_s))
    return {"engine": engine, "batch": batch, "clients": clients, "images_per_s": ips,
            "p50_ms": float(np.percentile(lat_ms, 50)), "p99_ms": float(np.percentile(lat_ms, 99))}


def build(model: str, work: Path) -> tuple[EmbeddingModel, Path, ModelContract]:
    cfg = load_config("tiny", overrides=MODELS[model])
    backbone, dim = build_backbone(cfg.model, drop_path_rate=0.0)
    size = cfg.model.img_size
    contract = ModelContract(image_size=size, resize_size=size, embed_dim=dim, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                             arch=cfg.model.arch, patch_size=cfg.model.patch_size)
    module = EmbeddingModel(backbone.eval())
    return module, export_onnx(module, work / "model.onnx", contract), contract


def in_process_rows(module: EmbeddingModel, onnx_path: Path, contract: ModelContract, batches: list[int],
                    seconds: float, threads: int) -> list[dict]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    rows = []
    for b in batches:
        x = torch.randn(b, *contract.input_shape)
        with torch.inference_mode():
            rows.append(row("pytorch eager", b, 1, latencies(lambda x=x: module(x), warmup=2, seconds=seconds)))
        xn = x.numpy()
        rows.append(row("onnxruntime", b, 1, latencies(lambda xn=xn: session.run(None, {"images": xn}), warmup=2,
                                                        seconds=seconds)))
    return rows


def triton_rows(onnx_path: Path, contract: ModelContract, work: Path, batches: list[int], clients: int,
                seconds: float, threads: int) -> list[dict]:
    repo = work / "repo"
    common = {"flavour": "cpu", "max_batch_size": max(max(batches), clients), "preferred_batch_sizes": [],
              "intra_op_threads": threads}
    write_model_repository(onnx_path, repo, RepositoryOptions(model_name="batched", max_queue_delay_us=500, **common))
    write_model_repository(onnx_path, repo, RepositoryOptions(model_name="plain", dynamic_batching=False, **common))
    http, grpc, metrics = free_ports(3)
    rows = []
    with TritonServer(repo, http_port=http, grpc_port=grpc, metrics_port=metrics) as server:
        client = EmbeddingClient(server.grpc_url, "plain")
        for b in batches:
            x = np.random.default_rng(0).standard_normal((b, *contract.input_shape), np.float32)
            rows.append(row("triton gRPC", b, 1, latencies(lambda x=x: client.infer(x), warmup=2, seconds=seconds)))
        for name, label in (("plain", "triton no-batch"), ("batched", "triton dyn-batch")):
            report = run_load_test(server.grpc_url, name, clients=clients, duration_s=seconds, batch_size=1)
            if report.errors:
                raise RuntimeError(f"{report.errors} failed requests: {report.error_samples}")
            rows.append(row(label, 1, clients, [t / 1e3 for t in report.latencies_ms], report.images_per_s))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients for the dynamic-batching rows")
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per row")
    parser.add_argument("--threads", type=int, default=1,
                        help="compute threads of every engine (torch, onnxruntime in and behind Triton); on a "
                             "shared machine more threads measure scheduling noise, not the engines")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="dino-bench-") as tmp:
        module, onnx_path, contract = build(args.model, Path(tmp))
        rows = in_process_rows(module, onnx_path, contract, args.batches, args.seconds, args.threads)
        rows += triton_rows(onnx_path, contract, Path(tmp), args.batches, args.clients, args.seconds, args.threads)
    print(f"model {args.model} ({contract.arch}/{contract.patch_size}, {contract.image_size} px, "
          f"D={contract.embed_dim}), {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| engine | batch | clients | images/s | p50 ms | p99 ms |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['engine']} | {r['batch']} | {r['clients']} | {r['images_per_s']:.1f} | {r['p50_ms']:.2f} "
              f"| {r['p99_ms']:.2f} |")


if __name__ == "__main__":
    main()
