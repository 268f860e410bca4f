"""What capture costs a serving step: throughput with capture on at the default rate against capture off.

The images-in entry point decodes each request's encoded bytes and resizes them to the model's
input, then offers the bytes to `Sampler.offer`. This script runs that step (Pillow decode, resize
to `--size`, float32 CHW) in one process and one run, in interleaved rounds, once with a disabled
sampler and once with capture on at the default rate (`CaptureSettings().rate`) into a local store,
and reports the ratio of the two throughputs (on / off: the median over blocks of the ratio within a
block, each block served in both modes one right after the other, in alternating order), the mean
microseconds `offer` itself takes, and what the writer stored. Each request is a distinct JPEG
(random crops of scikit-image's sample photographs), so de-duplication does not hide writes. Until
the Triton ensemble serves images, this harness stands in for it; the same ratio is to be measured
against tritonserver once it does.

    .venv/bin/python benchmarks/capture.py
    .venv/bin/python benchmarks/capture.py --requests 200 --rounds 60 --rate 0.05
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import platform
import tempfile
import time
from dataclasses import replace

import numpy as np
from PIL import Image

from dino_model.capture import CaptureSettings, Sampler

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


def preprocess(data: bytes, size: int) -> np.ndarray:
    """The entry point's work per request: decode, resize, float32 CHW in [0, 1]."""
    with Image.open(io.BytesIO(data)) as image:
        pixels = np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32)
    return (pixels / 255.0).transpose(2, 0, 1)


def serve(images: list[bytes], sampler: Sampler, size: int) -> tuple[float, float]:
    """(requests per second, mean microseconds in offer) over `images`."""
    in_offer = 0.0
    start = time.perf_counter()
    for data in images:
        preprocess(data, size)
        t0 = time.perf_counter()
        sampler.offer(data, model_version="1", drift_score=0.0)
        in_offer += time.perf_counter() - t0
    elapsed = time.perf_counter() - start
    return len(images) / elapsed, 1e6 * in_offer / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=100, help="requests per block")
    parser.add_argument("--rounds", type=int, default=40, help="blocks, each served off then on (then on "
                        "then off in the next), so both modes share the machine's slow and fast moments")
    parser.add_argument("--rate", type=float, default=CaptureSettings().rate, help="the capture rate")
    parser.add_argument("--size", type=int, default=224, help="the model's input side")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    images = request_images(args.requests * args.rounds)
    with tempfile.TemporaryDirectory() as store:
        on = Sampler(replace(CaptureSettings(), enabled=True, store=store, rate=args.rate), seed=0)
        off = Sampler(CaptureSettings())
        off_rps, on_rps, offer_us = [], [], []
        for r in range(args.rounds):
            batch = images[r * args.requests:(r + 1) * args.requests]
            for sampler in ((off, on) if r % 2 == 0 else (on, off)):
                rps, us = serve(batch, sampler, args.size)
                (on_rps if sampler is on else off_rps).append(rps)
                if sampler is on:
                    offer_us.append(us)
        on.close()
        result = {"machine": platform.processor() or platform.machine(), "requests": args.requests,
                  "rounds": args.rounds, "rate": args.rate,
                  "off_rps": round(float(np.median(off_rps)), 1), "on_rps": round(float(np.median(on_rps)), 1),
                  "ratio_on_off": round(float(np.median(np.array(on_rps) / np.array(off_rps))), 4),
                  "offer_us": round(float(np.mean(offer_us)), 2), "stored": on.counts["stored"],
                  "sampled": on.counts["sampled"]}
    logger.info(json.dumps(result))


if __name__ == "__main__":
    main()
