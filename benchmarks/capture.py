"""What capture costs serving: throughput of the image entry point with capture on at the default rate against off.

Two real tritonservers serve the same exported model from two copies of one repository, one with
capture switched on by its environment (DINO_CAPTURE_ENABLED=1, the default rate
`CaptureSettings().rate`, a local store), the other without. Closed-loop gRPC clients send encoded
JPEGs to `<model>_images` (decode and resize on the server's Python step, the model, the drift step).
The run is interleaved: each round serves one block of requests on each server, in alternating order,
so both share the machine's slow and fast moments (other jobs on a shared machine). The result is the
median over rounds of the throughput ratio on / off within a round, both medians of requests per
second, the load average around the run, and how many images the store holds at the end. Each request
is a distinct JPEG (random crops of scikit-image's sample photographs), so de-duplication hides no write.

    .venv/bin/python benchmarks/capture.py                        # tiny random model, 32 px input
    .venv/bin/python benchmarks/capture.py --rounds 30 --requests 100 --clients 4
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from dino_model.capture import CaptureSettings, CaptureStore

logger = logging.getLogger("benchmarks.capture")


def request_images(count: int, *, side: int = 256, seed: int = 0) -> list[bytes]:
    """`count` distinct JPEGs: random crops of scikit-image's sample photographs."""
    from skimage import data

    photos = [np.asarray(Image.fromarray(getattr(data, name)()).convert("RGB"))
              for name in ("astronaut", "coffee", "chelsea", "rocket")]
    rng = np.random.default_rng(seed)
    images = []
    for i in range(count):
        photo = photos[i % len(photos)]
        top, left = rng.integers(0, photo.shape[0] - side), rng.integers(0, photo.shape[1] - side)
        out = io.BytesIO()
        Image.fromarray(photo[top:top + side, left:left + side]).save(out, format="JPEG", quality=90)
        images.append(out.getvalue())
    return images


def tiny_onnx(work: Path) -> Path:
    """An exported embedding model of the `tiny` config with random weights (speed does not depend on them)."""
    from dino_model.config import load_config
    from dino_model.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from dino_model.export.contract import ModelContract
    from dino_model.export.onnx import EmbeddingModel, export_onnx
    from dino_model.models.backbone import build_backbone

    cfg = load_config("tiny")
    backbone, dim = build_backbone(cfg.model, drop_path_rate=0.0)
    size = cfg.model.img_size
    contract = ModelContract(image_size=size, resize_size=size, embed_dim=dim, mean=IMAGENET_MEAN,
                             std=IMAGENET_STD, arch=cfg.model.arch, patch_size=cfg.model.patch_size)
    return export_onnx(EmbeddingModel(backbone.eval()), work / "model.onnx", contract)


def start_server(onnx: Path, repository: Path, env: dict[str, str]):
    """A tritonserver on free loopback ports serving `onnx` (cpu flavour), started with `env` added."""
    from dino_model.runtime.processes import free_ports
    from dino_model.serving.server import TritonServer
    from dino_model.triton.config import RepositoryOptions
    from dino_model.triton.repository import write_model_repository

    write_model_repository(onnx, repository, RepositoryOptions(flavour="cpu", max_batch_size=16,
                                                               preferred_batch_sizes=[]))
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        http, grpc, metrics = free_ports(3)
        return TritonServer(repository, http_port=http, grpc_port=grpc, metrics_port=metrics).start()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def serve_block(url: str, images: list[bytes], clients: int) -> float:
    """Requests per second of `clients` closed-loop clients sending one image per request."""
    from dino_model.serving.client import EmbeddingClient

    shares = [images[i::clients] for i in range(clients)]
    own = [EmbeddingClient(url) for _ in range(clients)]

    def send(index: int) -> None:
        for data in shares[index]:
            own[index].infer_encoded([data])

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(send, range(clients)))
    return len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=60, help="requests per block (one image each)")
    parser.add_argument("--rounds", type=int, default=20, help="rounds, each one block per server, alternating")
    parser.add_argument("--clients", type=int, default=2, help="concurrent closed-loop clients")
    parser.add_argument("--rate", type=float, default=CaptureSettings().rate, help="the capture rate")
    parser.add_argument("--on-first", action="store_true", help="start the capture-on server first")
    parser.add_argument("--onnx", help="an exported model.onnx (default: the tiny config, random weights)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    work = Path(tempfile.mkdtemp(prefix="capture-bench-"))
    servers = []
    try:
        onnx = Path(args.onnx) if args.onnx else tiny_onnx(work)
        store = work / "store"
        on_env = {"DINO_CAPTURE_ENABLED": "1", "DINO_CAPTURE_STORE": str(store), "DINO_CAPTURE_RATE": str(args.rate)}
        envs = {"off": {"DINO_CAPTURE_ENABLED": "0"}, "on": on_env}
        started = {}
        for name in (("on", "off") if args.on_first else ("off", "on")):  # the start order, to see its bias
            started[name] = start_server(onnx, work / f"repo-{name}", envs[name])
            servers.append(started[name])
        off, on = started["off"], started["on"]
        images = request_images(args.requests * (args.rounds + 1) * 2)
        serve_block(off.grpc_url, images[:args.requests], args.clients)  # warm-up of both, not counted
        serve_block(on.grpc_url, images[args.requests:2 * args.requests], args.clients)
        load_before = os.getloadavg()
        off_rps, on_rps = [], []
        for r in range(1, args.rounds + 1):
            blocks = {name: images[(2 * r + k) * args.requests:(2 * r + k + 1) * args.requests]
                      for k, name in enumerate(("off", "on"))}
            for name in (("off", "on") if r % 2 else ("on", "off")):
                rps = serve_block((off if name == "off" else on).grpc_url, blocks[name], args.clients)
                (off_rps if name == "off" else on_rps).append(rps)
        load_after = os.getloadavg()
        for server in servers:
            server.stop()  # the capture step's finalize writes what is queued
        servers.clear()
        stored = sum(1 for _ in CaptureStore(store).iter_records()) if store.is_dir() else 0
        result = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                  "load_average_1m": [round(load_before[0], 2), round(load_after[0], 2)],
                  "requests_per_block": args.requests, "rounds": args.rounds, "clients": args.clients,
                  "rate": args.rate, "started_first": "on" if args.on_first else "off",
                  "off_rps": round(float(np.median(off_rps)), 1),
                  "on_rps": round(float(np.median(on_rps)), 1),
                  "ratio_on_off": round(float(np.median(np.array(on_rps) / np.array(off_rps))), 4),
                  "ratio_quartiles": [round(float(q), 4) for q in
                                      np.percentile(np.array(on_rps) / np.array(off_rps), [25, 75])],
                  "offered_on": args.requests * (args.rounds + 1), "stored": stored}
        logger.info(json.dumps(result))
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
