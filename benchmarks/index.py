"""Similarity search speed and recall: exact (flat inner product) vs IVF, as the index grows.

Embeddings are random but clustered like a real embedding space: points around `--clusters` random
centres in `--dim` dimensions (ViT-S/16's 384 by default), L2-normalised as the model returns them;
queries are fresh draws from the same clusters. Rows per set size:

- `build s`: exact adds the vectors; ivf trains its k-means cells (the default nlist, about 4 sqrt(N))
  and adds them, once per size, then is searched at each `--nprobe`;
- `queries/s`: `--queries` queries searched in one batch for the top `--k`;
- `recall@k`: the share of the exact top-k that IVF returns (1 for exact by definition).

faiss uses `--threads` OpenMP threads. Numbers go to docs/serving.md.

    .venv/bin/python benchmarks/index.py                                   # 10k and 100k, 384-d
    .venv/bin/python benchmarks/index.py --sizes 1000000 --nprobe 8 32     # more cells searched or fewer
"""

from __future__ import annotations

import argparse
import logging
import platform
import time

import numpy as np

from dino_model.serving.index import IndexOptions, ServedIdentity, SimilarityIndex, build_index, faiss_module

MODEL = ServedIdentity(name="benchmark", version="1", onnx_sha256="")


def clustered(n: int, centres: np.ndarray, spread: float, rng: np.random.Generator) -> np.ndarray:
    """n unit vectors: a random centre each, plus isotropic noise `spread` times as large as the centres."""
    points = centres[rng.integers(0, len(centres), n)] + spread * rng.standard_normal((n, centres.shape[1]),
                                                                                       dtype=np.float32)
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row of `truth` found in the same row of `found`."""
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found.tolist(), truth.tolist(), strict=True)]))


def timed_build(database: np.ndarray, options: IndexOptions) -> tuple[SimilarityIndex, float]:
    names = [""] * len(database)
    start = time.perf_counter()
    index = build_index(database, names, names, model=MODEL, options=options)
    return index, time.perf_counter() - start


def timed_search(index: SimilarityIndex, queries: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    """(queries per second, ids (queries, k))."""
    start = time.perf_counter()
    _, ids = index.search(queries, k)
    return len(queries) / (time.perf_counter() - start), ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--clusters", type=int, default=256)
    parser.add_argument("--spread", type=float, default=2.0, help="noise around a centre / centre length")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    faiss = faiss_module()
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    centres = rng.standard_normal((args.clusters, args.dim), dtype=np.float32)
    print(f"faiss {faiss.__version__}, {platform.processor() or platform.machine()}, {args.threads} threads, "
          f"{args.dim}-d, {args.clusters} clusters (spread {args.spread}), {args.queries} queries, top {args.k}")
    print(f"{'N':>8} | {'kind':<5} | {'nlist':>5} | {'nprobe':>6} | {'build s':>8} | {'queries/s':>9} | "
          f"recall@{args.k}")
    for size in args.sizes:
        database = clustered(size, centres, args.spread, rng)
        queries = clustered(args.queries, centres, args.spread, rng)
        exact, built = timed_build(database, IndexOptions("exact"))
        qps, truth = timed_search(exact, queries, args.k)
        print(f"{size:>8} | {'exact':<5} | {'-':>5} | {'-':>6} | {built:>8.2f} | {qps:>9.0f} | 1.000")
        ivf, built = timed_build(database, IndexOptions("ivf"))  # trained once, searched at each nprobe
        for nprobe in args.nprobe:
            ivf.index.nprobe = nprobe
            qps, ids = timed_search(ivf, queries, args.k)
            print(f"{size:>8} | {'ivf':<5} | {ivf.index.nlist:>5} | {nprobe:>6} | {built:>8.2f} | {qps:>9.0f} | "
                  f"{recall(ids, truth):.3f}")

if __name__ == "__main__":
    main()
