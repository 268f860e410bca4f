"""`dino-mlops serve | deploy | infer`: from a model repository to answered gRPC requests."""

from __future__ import annotations

import argparse
import inspect
import logging
import signal
import threading
from typing import Any

from dino_model.cli.options import add_lineage_args, lineage_from_args, print_result
from dino_model.serving.admin_key import ADMIN_HEADER, ADMIN_KEY_ENV
from dino_model.serving.client import DEFAULT_URL, LOAD_TIMEOUT_S
from dino_model.serving.server import TritonServer
from dino_model.triton.config import DEFAULT_MODEL_NAME, RepositoryOptions

logger = logging.getLogger(__name__)


def _server(name: str) -> Any:
    """TritonServer's default of keyword `name`."""
    return inspect.signature(TritonServer).parameters[name].default


def register(sub: argparse._SubParsersAction) -> None:
    _register_serve(sub)
    _register_deploy(sub)
    _register_infer(sub)


def _register_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the real tritonserver on a repository until Ctrl-C / SIGTERM")
    p.add_argument("--repository", required=True)
    _add_server_args(p)
    p.add_argument("--log-stderr", action="store_true",
                   help="tritonserver's log on stderr (in a container, for `kubectl logs`) instead of a file")
    p.set_defaults(func=run_serve)


def _add_server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--http-port", type=int, default=_server("http_port"))
    p.add_argument("--grpc-port", type=int, default=_server("grpc_port"))
    p.add_argument("--metrics-port", type=int, default=_server("metrics_port"), help="Prometheus metrics (/metrics)")
    p.add_argument("--address", default=_server("address"), help="bind address (0.0.0.0 for every interface)")
    p.add_argument("--model", action="append", metavar="NAME",
                   help="a model of the repository to load at start, by its folder name (repeatable; default: "
                        "every model); not a served-model selector like --model-name of deploy and infer")
    p.add_argument("--tritonserver", help="tritonserver binary (default: the one in nvidia-pytriton)")
    p.add_argument("--startup-timeout", type=float, default=_server("startup_timeout_s"),
                   help="seconds to wait for readiness")
    p.add_argument("--admin-key-file",
                   help="file (mode 0600) holding the key that opens the repository API (model load/unload); "
                        "default: $TRITON_ADMIN_KEY, else a fresh key written to <repository>.admin-key. "
                        "A non-loopback --address needs one of the two")


def _register_deploy(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("deploy", help="put a model in service on a live Triton: version 1 on a server serving none, "
                                      "else N+1 rolled out over N, which keeps serving on failure")
    p.add_argument("--onnx", help="file written by `dino-mlops export` (its <stem>.export.json is the export record)")
    p.add_argument("--flavour", choices=("gpu", "cpu"), default=RepositoryOptions.flavour,
                   help="backend of a first version (gpu: onnxruntime backend of NVIDIA's image; cpu: Python "
                        "backend, as the bundled tritonserver has); later versions keep the served one's")
    p.add_argument("--recover", action="store_true",
                   help="only finish a deploy that was killed (roll forward or back per its journal) and clean up")
    p.add_argument("--repository", required=True, help="the live server's model repository")
    p.add_argument("--url", default=DEFAULT_URL, help="Triton gRPC host:port")
    p.add_argument("--model-name", default=DEFAULT_MODEL_NAME)
    p.add_argument("--smoke-images", help="image folder for the smoke test (default: seeded noise only)")
    p.add_argument("--tolerance", type=float, help="max |served - onnxruntime| (default from the config)")
    p.add_argument("--load-timeout", type=float, default=LOAD_TIMEOUT_S, help="seconds allowed per model load")
    p.add_argument("--admin-header", default=ADMIN_HEADER,
                   help="key name of the server's --grpc-restricted-protocol=model-repository:<name>=<key>")
    p.add_argument("--admin-key-env", default=ADMIN_KEY_ENV, help="environment variable holding that key")
    p.add_argument("--admin-key-file", help="file holding that key (default: <repository>.admin-key, written by "
                                            "`dino-mlops serve`, else the variable of --admin-key-env)")
    add_lineage_args(p)
    p.set_defaults(func=run_deploy)


def _register_infer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("infer", help="embed image files or folders through Triton over gRPC")
    p.add_argument("inputs", nargs="+", help="image files and/or folders (class sub-folders give labels)")
    p.add_argument("--output", required=True, help=".npy (embeddings), .npz (also labels: a k-NN index) or .json")
    p.add_argument("--url", default=DEFAULT_URL, help="Triton gRPC host:port")
    p.add_argument("--model-name", default=DEFAULT_MODEL_NAME)
    p.add_argument("--model-version", default="", help="pin a version (default: the server's latest)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=4, help="batches in flight at once")
    p.add_argument("--server-preprocess", action="store_true",
                   help="send the image files as they are to the server's image entry point (<model>_images), "
                        "which decodes and preprocesses them with the same code")
    p.add_argument("--knn-index", help=".npz written by `infer` on labelled folders: adds k-NN labels")
    p.add_argument("--k", "-k", type=int, default=20,
                   help="neighbours: voting for --knn-index labels, listed per image by --search")
    p.add_argument("--temperature", type=float, default=0.07)
    p.add_argument("--search", metavar="INDEX_DIR",
                   help="similarity index written by `dino-mlops index build`: adds each image's k nearest images "
                        "(needs faiss-cpu and an .npz or .json output)")
    p.add_argument("--allow-model-mismatch", action="store_true",
                   help="search even when the server's model is not the one the index was built from")
    p.add_argument("--drift-reference", metavar="FILE",
                   help="the served model's drift reference (<stem>.drift.npz from `dino-mlops export`): reports "
                        "whether these images' embeddings drift from its training data")
    p.set_defaults(func=run_infer)


def run_serve(args: argparse.Namespace) -> int:
    from dino_model.errors import ServingError
    from dino_model.serving.admin_key import ADMIN_KEY_ENV, key_from_env, read_admin_key
    from dino_model.serving.server import TritonServer
    from dino_model.triton.config import check_model_name

    for name in args.model or ():
        check_model_name(name)
    key = read_admin_key(args.admin_key_file) if args.admin_key_file else key_from_env()
    server = TritonServer(args.repository, http_port=args.http_port, grpc_port=args.grpc_port,
                          metrics_port=args.metrics_port, address=args.address, models=args.model or ("*",),
                          binary=args.tritonserver, startup_timeout_s=args.startup_timeout, admin_key=key,
                          log_to_stderr=args.log_stderr)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with server:
        print_result({"grpc": server.grpc_url, "http": server.http_url, "metrics": server.metrics_url,
                      "repository": str(server.repository), "pid": server.process.pid,
                      "admin_key_from": str(server.key_file or args.admin_key_file or f"${ADMIN_KEY_ENV}")})
        while not stop.wait(1.0):
            if not server.running:
                raise ServingError(f"tritonserver exited with code {server.process.returncode}:\n"
                                   f"{server.log_errors()}")
        logger.info("stopping tritonserver")
    return 0


def run_deploy(args: argparse.Namespace) -> int:
    from dino_model.errors import ConfigError
    from dino_model.serving.admin_key import admin_headers_for
    from dino_model.serving.release import release
    from dino_model.serving.rollout import recover

    headers = admin_headers_for(args.repository, args.admin_key_file, env=args.admin_key_env, header=args.admin_header)
    if args.recover:
        if args.onnx:
            raise ConfigError("--recover only finishes an interrupted deploy; run the deploy of --onnx afterwards "
                              "(a deploy recovers by itself first)")
        print_result(recover(args.repository, url=args.url, model_name=args.model_name,
                             load_timeout_s=args.load_timeout, headers=headers))
        return 0
    if not args.onnx:
        raise ConfigError("deploy needs --onnx FILE (or --recover to finish an interrupted deploy)")
    print_result(release(args.onnx, args.repository, url=args.url, model_name=args.model_name, flavour=args.flavour,
                         smoke_image_dir=args.smoke_images, tolerance=args.tolerance, lineage=lineage_from_args(args),
                         load_timeout_s=args.load_timeout, headers=headers))
    return 0


def run_infer(args: argparse.Namespace) -> int:
    from dino_model.errors import ConfigError
    from dino_model.serving.client import EmbeddingClient
    from dino_model.serving.inference import embed_images, predict_labels, write_embeddings
    from dino_model.triton.config import check_model_name, check_version

    check_model_name(args.model_name)
    if args.model_version:
        check_version(args.model_version)
        if args.server_preprocess:
            raise ConfigError("--server-preprocess sends to the image entry point, which serves the latest version; "
                              "drop --model-version, or preprocess here to pin one")
    reference = _drift_reference(args.drift_reference) if args.drift_reference else None
    client = EmbeddingClient(args.url, args.model_name, model_version=args.model_version)
    index = _search_index(args, client) if args.search else None
    result = embed_images(args.inputs, client, batch_size=args.batch_size, concurrency=args.concurrency,
                          server_preprocess=args.server_preprocess)
    if args.knn_index:
        result.predictions = predict_labels(result, args.knn_index, k=args.k, temperature=args.temperature)
    if index is not None:
        from dino_model.serving.index import neighbours

        result.neighbours = neighbours(index, result.embeddings, args.k)
    path = write_embeddings(result, args.output, model=args.model_name)
    summary = {"output": str(path), "images": len(result.paths), "embedding_dim": int(result.embeddings.shape[1]),
               "skipped": result.skipped}
    if result.predictions:
        summary["predictions"] = dict(zip(result.paths[:20], result.predictions[:20], strict=True))
    if result.neighbours:
        summary["neighbours"] = {p: [n["path"] for n in found] for p, found in zip(result.paths[:20],
                                                                                 result.neighbours, strict=False)}
    if reference is not None:
        from dino_model.monitoring.drift import batch_drift

        summary["drift"] = batch_drift(result.embeddings, reference)
    print_result(summary)
    return 0


def _drift_reference(path: str):
    """The --drift-reference file, read and checked before the server is called (an invalid one is an error
    naming the file and the problem, never a `drifted: false`)."""
    from dino_model.monitoring.drift import DriftReference

    return DriftReference.load(path)


def _search_index(args: argparse.Namespace, client: Any):
    """The --search index, checked against the served model before any image is sent."""
    from dino_model.errors import ConfigError
    from dino_model.serving.index import open_for_search

    if not args.output.endswith((".npz", ".json")):
        raise ConfigError(f"--search writes neighbours to .npz or .json; --output {args.output} holds embeddings only")
    return open_for_search(args.search, client, allow_mismatch=args.allow_model_mismatch)
