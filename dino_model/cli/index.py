"""`dino-mlops index build`: a similarity index of images, embedded by the served model over gRPC.

The images go through the same client path as `infer` (evaluation preprocessing, concurrent batches),
so the index holds exactly what the server returns for them and `infer --search` compares like with
like; the served model's identity is read before the first image is sent.
"""

from __future__ import annotations

import argparse
import logging

from dino_model.cli.options import print_result
from dino_model.serving.client import DEFAULT_URL
from dino_model.serving.index import DEFAULT_NPROBE, KINDS
from dino_model.triton.config import DEFAULT_MODEL_NAME

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("index", help="similarity indexes of served embeddings (for `infer --search`)")
    sub = parser.add_subparsers(dest="index_command", required=True, metavar="ACTION")

    build = sub.add_parser("build", help="embed images through Triton and write a faiss index + manifest")
    build.add_argument("inputs", nargs="+", help="image files and/or folders (class sub-folders give labels)")
    build.add_argument("--output", required=True, metavar="INDEX_DIR", help="folder for index.faiss and manifest.json")
    build.add_argument("--url", default=DEFAULT_URL, help="Triton gRPC host:port")
    build.add_argument("--model-name", default=DEFAULT_MODEL_NAME)
    build.add_argument("--model-version", default="", help="pin a version (default: the server's latest)")
    build.add_argument("--kind", choices=KINDS, default="exact",
                       help="exact: every vector compared; ivf: k-means cells, nprobe of them searched")
    build.add_argument("--nlist", type=int, help="ivf cells (default: about 4 sqrt(N), at least 39 images per cell)")
    build.add_argument("--nprobe", type=int, default=DEFAULT_NPROBE, help="ivf cells searched per query")
    build.add_argument("--data-version", default="", help="DVC md5 of the images indexed, recorded in the manifest")
    build.add_argument("--batch-size", type=int, default=32)
    build.add_argument("--concurrency", type=int, default=4, help="batches in flight at once")
    build.set_defaults(func=run_build)


def run_build(args: argparse.Namespace) -> int:
    from dino_model.serving.client import EmbeddingClient
    from dino_model.serving.index import IndexOptions, build_index, relative_paths, served_identity, write_index
    from dino_model.serving.inference import embed_images
    from dino_model.triton.config import check_model_name, check_version

    check_model_name(args.model_name)
    if args.model_version:
        check_version(args.model_version)
    options = IndexOptions(kind=args.kind, nlist=args.nlist, nprobe=args.nprobe)
    client = EmbeddingClient(args.url, args.model_name, model_version=args.model_version)
    model = served_identity(client)
    if not args.data_version:
        logger.warning("no --data-version given: the manifest records no data version for the images")
    result = embed_images(args.inputs, client, batch_size=args.batch_size, concurrency=args.concurrency)
    paths, root = relative_paths(result.paths, args.inputs)
    index = build_index(result.embeddings, paths, result.labels, model=model, options=options,
                        data_version=args.data_version, image_root=root)
    folder = write_index(index, args.output)
    manifest = index.manifest
    print_result({"output": str(folder), "kind": manifest["kind"], "images": manifest["count"],
                  "dimension": manifest["dimension"], "model": model.describe(), "skipped": result.skipped}
                 | {key: manifest[key] for key in ("nlist", "nprobe") if key in manifest})
    return 0
