"""What the drift monitor adds to each served request, against the model's own inference time.

The Python backend hands every answered batch of embeddings to `DriftMonitor.add`, which appends them to
the window and recomputes MMD^2 against the reference every `--update-every` embeddings. This script
times, in one process and one run, the ONNX model's inference for a batch of one (onnxruntime on CPU,
the CPU flavour's engine) and the monitor's work per request (amortised over many requests), so the
ratio is what the drift work adds to a request's compute on this machine. Rows per embedding width:
ViT-T (192), ViT-S (384), ViT-B (768); the reference is `REFERENCE_SIZE` embeddings.

    .venv/bin/python benchmarks/drift.py
    .venv/bin/python benchmarks/drift.py --requests 4096 --update-every 16
"""

from __future__ import annotations

import argparse
import logging
import platform
import time

import numpy as np

from dino_model.monitoring.drift import (
    REFERENCE_SIZE,
    DriftMonitor,
    DriftReference,
    build_reference,
    l2_normalise,
    window_mmd2,
)

logger = logging.getLogger("benchmarks.drift")


def per_request_us(monitor: DriftMonitor, stream: np.ndarray) -> float:
    """Mean microseconds of `add` per request of one embedding, updates included (amortised)."""
    start = time.perf_counter()
    for row in stream:
        monitor.add(row[None])
    return 1e6 * (time.perf_counter() - start) / len(stream)


def update_us(reference: DriftReference, window: np.ndarray, repeats: int = 20) -> float:
    """Mean microseconds of one MMD^2 of a full window against the reference."""
    start = time.perf_counter()
    for _ in range(repeats):
        window_mmd2(window, reference)
    return 1e6 * (time.perf_counter() - start) / repeats


def onnx_request_us(dim: int, repeats: int) -> float:
    """Mean microseconds of one batch-of-one inference of a linear ONNX model of output width `dim`
    (a floor: any real backbone costs more, which only shrinks the drift share)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.random.default_rng(0).standard_normal((3 * 32 * 32, dim)).astype(
        np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, dim])], initializer=[weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.zeros((1, 3, 32, 32), np.float32)
    for _ in range(20):
        session.run(None, {"x": x})
    start = time.perf_counter()
    for _ in range(repeats):
        session.run(None, {"x": x})
    return 1e6 * (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", type=int, nargs="+", default=[192, 384, 768])
    parser.add_argument("--requests", type=int, default=2048)
    parser.add_argument("--update-every", type=int, default=64)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rng = np.random.default_rng(0)
    logger.info("%s, %s", platform.processor() or platform.machine(), platform.python_version())
    logger.info("| width | drift us/request | one MMD^2 update us | linear ONNX us/request | drift / ONNX |")
    logger.info("|---|---|---|---|---|")
    for dim in args.dims:
        reference = build_reference(l2_normalise(rng.standard_normal((REFERENCE_SIZE * 2, dim)).astype(np.float32)))
        monitor = DriftMonitor(reference, update_every=args.update_every)
        stream = rng.standard_normal((args.requests, dim)).astype(np.float32)
        drift_us = per_request_us(monitor, stream)
        one_update_us = update_us(reference, stream[: reference.window])
        onnx_us = onnx_request_us(dim, repeats=args.requests)
        logger.info("| %d | %.1f | %.0f | %.1f | %.2f |", dim, drift_us, one_update_us, onnx_us, drift_us / onnx_us)


if __name__ == "__main__":
    main()
