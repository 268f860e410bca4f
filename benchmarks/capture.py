"""What capture costs serving: throughput of the image entry point with capture on at the default rate against off.

One real tritonserver serves an exported model; capture is switched on and off between blocks of
requests by reloading the entry point's capture steps (`<model>_preprocess`, `<model>_drift`) with the
`capture_enabled` parameter set or not, as `dino-mlops triton-repo --capture` writes it (the store and the
rate come from the server's environment: a local folder, the default rate `CaptureSettings().rate`).
One server, not two, because two servers side by side differed by about 9% whichever had capture on:
how the machine schedules two tritonservers and their stubs is not what is measured. Closed-loop gRPC
clients send encoded JPEGs to `<model>_images` (decode and resize on the server's Python step, the model,
the drift step). Each round serves one block with capture off and one with it on, in alternating order,
each after a short unmeasured warm-up; the result is the median over rounds of the throughput ratio
on / off within a round, both medians of requests per second, the load average around the run, and how
many images the store holds at the end. Each request is a distinct JPEG (random crops of scikit-image's
sample photographs), so de-duplication hides no write.

    .venv/bin/python benchmarks/capture.py                        # tiny random model, 32 px input
    .venv/bin/python benchmarks/capture.py --rounds 30 --requests 100 --clients 2
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
    from pipelines.flywheel_demo import environment

    write_model_repository(onnx, repository, RepositoryOptions(flavour="cpu", max_batch_size=16,
                                                               preferred_batch_sizes=[]))
    http, grpc, metrics = free_ports(3)
    with environment(env):  # the server inherits it
        return TritonServer(repository, http_port=http, grpc_port=grpc, metrics_port=metrics).start()


def switch_capture(server, on: bool, model: str = "dino") -> None:
    """Reload the capture steps with `capture_enabled` set to `on` (the server's environment does not set it)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url.removeprefix("grpc://"))
    for step in (f"{model}_preprocess", f"{model}_drift"):
        config = client.get_model_config(step, as_json=True)["config"]
        config.setdefault("parameters", {})["capture_enabled"] = {"string_value": "true" if on else "false"}
        client.load_model(step, config=json.dumps(config), headers=server.admin_headers)
    client.close()


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
    parser.add_argument("--rounds", type=int, default=20, help="rounds, each one block off and one on, alternating")
    parser.add_argument("--warmup", type=int, default=10, help="unmeasured requests after each switch")
    parser.add_argument("--clients", type=int, default=2, help="concurrent closed-loop clients")
    parser.add_argument("--rate", type=float, default=CaptureSettings().rate, help="the capture rate")
    parser.add_argument("--onnx", help="an exported model.onnx (default: the tiny config, random weights)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    work = Path(tempfile.mkdtemp(prefix="capture-bench-"))
    server = None
    try:
        onnx = Path(args.onnx) if args.onnx else tiny_onnx(work)
        store = work / "store"
        server = start_server(onnx, work / "repo", {"DINO_CAPTURE_STORE": str(store),
                                                     "DINO_CAPTURE_RATE": str(args.rate)})
        block = args.requests + args.warmup
        images = iter(request_images(block * 2 * args.rounds))
        rps: dict[str, list[float]] = {"off": [], "on": []}
        load_before = os.getloadavg()
        for r in range(args.rounds):
            for name in (("off", "on") if r % 2 == 0 else ("on", "off")):
                switch_capture(server, name == "on")
                serve_block(server.grpc_url, [next(images) for _ in range(args.warmup)], args.clients)
                rps[name].append(serve_block(server.grpc_url, [next(images) for _ in range(args.requests)],
                                             args.clients))
        load_after = os.getloadavg()
        server.stop()  # the capture step's finalize writes what is queued
        server = None
        stored = sum(1 for _ in CaptureStore(store).iter_records()) if store.is_dir() else 0
        ratios = np.array(rps["on"]) / np.array(rps["off"])
        result = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                  "load_average_1m": [round(load_before[0], 2), round(load_after[0], 2)],
                  "requests_per_block": args.requests, "rounds": args.rounds, "clients": args.clients,
                  "rate": args.rate, "off_rps": round(float(np.median(rps["off"])), 1),
                  "on_rps": round(float(np.median(rps["on"])), 1),
                  "ratio_on_off": round(float(np.median(ratios)), 4),
                  "ratio_quartiles": [round(float(q), 4) for q in np.percentile(ratios, [25, 75])],
                  "offered_on": block * args.rounds, "stored": stored}
        logger.info(json.dumps(result))
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
