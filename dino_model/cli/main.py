"""The `dino-mlops` command: one argparse tree, one module per subcommand group.

Each module in COMMAND_MODULES exposes `register(subparsers)`, adding its parsers with a
`func(args) -> int` default. A DinoError becomes one line on stderr and exit code 2; results go
to stdout, logs to stderr. Help is uniform, set up here once for every parser: each option with a
default shows it, and each command ends with an example from EXAMPLES.

The client-only distribution, dino-mlops-client (client/pyproject.toml: the same package without
torch, kfp or dvc), installs `client_main` as its `dino-mlops`: it runs CLIENT_COMMANDS, `--help`
and `--version`, and answers any other command, its --help included, with one line naming the full
platform, rather than a traceback from a missing dependency half-way through the command.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import logging
import sys
from collections.abc import Sequence

from dino_model.errors import DinoError
from dino_model.logs import setup_logging

COMMAND_MODULES = (
    "dino_model.cli.pretrain",
    "dino_model.cli.evaluate",
    "dino_model.cli.data",
    "dino_model.cli.export",
    "dino_model.cli.serving",
    "dino_model.cli.index",
    "dino_model.cli.monitoring",
    "dino_model.cli.pipeline",
    "dino_model.cli.retrain",
)

FULL_DISTRIBUTION = "dino-mlops"
CLIENT_DISTRIBUTION = "dino-mlops-client"
# what dino-mlops-client runs: gRPC inference needs numpy, Pillow and tritonclient only
CLIENT_COMMANDS = frozenset({"infer"})

logger = logging.getLogger(__name__)

CKPT = "runs/digits/checkpoint.pth"
# One example per command, keyed by the words after `dino-mlops`; shown at the end of its --help.
EXAMPLES = {
    "": "dino-mlops eval knn --checkpoint runs/digits/checkpoint.pth",
    "pretrain": "dino-mlops pretrain --config digits_vit_tiny --output-dir runs/digits train.epochs=5",
    "eval": f"dino-mlops eval knn --checkpoint {CKPT}",
    "eval knn": f"dino-mlops eval knn --checkpoint {CKPT} --val-dir data/digits/val eval.knn_k=[10,20]",
    "eval linear": (f"dino-mlops eval linear --checkpoint {CKPT} --train-dir data/digits/train "
                    "--val-dir data/digits/val --no-augment --lr 1.0"),
    "eval davis": f"dino-mlops eval davis --checkpoint {CKPT} --davis-root data/davis --output-dir runs/davis",
    "eval attention": f"dino-mlops eval attention --checkpoint {CKPT} --image photo.jpg --output-dir runs/attention",
    "eval retrieval": f"dino-mlops eval retrieval --checkpoint {CKPT} --database-dir data/digits/val",
    "eval copydetection": f"dino-mlops eval copydetection --checkpoint {CKPT} --images data/digits/val --originals 100",
    "data": "dino-mlops data status",
    "data init": "dino-mlops data init --remote-dir /mnt/dvc-remote",
    "data status": "dino-mlops data status --limit 5",
    "data snapshot": "dino-mlops data snapshot -m 'data: add new images'",
    "data pull": "dino-mlops data pull HEAD~1",
    "data diff": "dino-mlops data diff HEAD~1 workspace",
    "data log": "dino-mlops data log -n 5",
    "data shard": "dino-mlops data shard data/imagenet/train data/imagenet-shards/train --shard-size 256MB",
    "data ensure": "dino-mlops data ensure --source digits",
    "data materialize": "dino-mlops data materialize digits data/digits",
    "data capture": "dino-mlops data capture list --store s3://dvc/captured",
    "data capture list": "dino-mlops data capture list --store /mnt/captured",
    "data capture erase": "dino-mlops data capture erase --store /mnt/captured --before 2026-11-01",
    "data capture expire": "dino-mlops data capture expire --store /mnt/captured --retention-days 30",
    "data capture snapshot": ("dino-mlops data capture snapshot --store /mnt/captured "
                              "--checkpoint runs/digits/checkpoint.pth"),
    "data remote": "dino-mlops data remote list",
    "data remote add": "dino-mlops data remote add minio s3://dvc/dino --endpoint-url http://minio:9000 --default",
    "data remote list": "dino-mlops data remote list",
    "data remote default": "dino-mlops data remote default minio",
    "export": f"dino-mlops export --checkpoint {CKPT} --output models/dino.onnx --fp16",
    "triton-repo": "dino-mlops triton-repo --onnx models/dino.onnx --repository models/repo --flavour cpu",
    "serve": "dino-mlops serve --repository models/repo",
    "deploy": "dino-mlops deploy --onnx models/dino-v2.onnx --repository models/repo --url localhost:8001",
    "infer": "dino-mlops infer data/digits/val --output val.npz",
    "index": "dino-mlops index build data/digits/train --output models/digits-index",
    "index build": ("dino-mlops index build --url localhost:8001 --model-name dino data/digits/train "
                    "--output models/digits-index --kind ivf --nlist 32 --nprobe 8"),
    "monitoring": "dino-mlops monitoring up --triton localhost:8002",
    "monitoring up": "dino-mlops monitoring up --triton localhost:8002 --duration-s 600",
    "monitoring render-k8s": "dino-mlops monitoring render-k8s --check",
    "monitoring check": "dino-mlops monitoring check --rules-test tests/dino_model/monitoring/rules_test.yml",
    "pipeline": "dino-mlops pipeline compile --output dino_training_pipeline.yaml",
    "pipeline compile": "dino-mlops pipeline compile --output dino_training_pipeline.yaml",
    "pipeline submit": "dino-mlops pipeline submit --host http://ml-pipeline.kubeflow:8888 --param min_knn_top1=70",
    "pipeline upload": "dino-mlops pipeline upload --host http://ml-pipeline.kubeflow:8888 --version 0.1.0",
    "pipeline run": "dino-mlops pipeline run --local train.epochs=2",
    "pipeline stop-local": "dino-mlops pipeline stop-local",
    "retrain": "dino-mlops retrain check --repo ../dino-data --local",
    "retrain check": "dino-mlops retrain check --repo ../dino-data --host http://ml-pipeline.kubeflow:8888",
    "retrain watch": "dino-mlops retrain watch --repo ../dino-data --fetch --local --interval 300",
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description and the example's layout; option defaults come from `_show_defaults`."""


def package_version(distribution: str = FULL_DISTRIBUTION) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def build_parser(distribution: str = FULL_DISTRIBUTION) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dino-mlops", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=package_version(distribution),
                        help="print the version and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).register(sub)
    for each in iter_parsers(parser):
        each.formatter_class = HelpFormatter
        _show_defaults(each)
        example = EXAMPLES.get(each.prog.removeprefix(parser.prog).strip())
        if example:
            each.epilog = f"Example:\n  {example}"
    return parser


def iter_parsers(parser: argparse.ArgumentParser):
    """The parser and all its subcommand parsers, depth first."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases share a parser
                yield from iter_parsers(child)


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Append `(default: X)` to each option whose default means something and whose help does not say it."""
    for action in parser._actions:
        default = action.default
        if (action.help == argparse.SUPPRESS or default in (None, "", argparse.SUPPRESS)
                or isinstance(default, bool) or (isinstance(default, (list, tuple)) and not default)):
            continue
        text = action.help or ""
        if "default" not in text.lower():
            action.help = f"{text} (default: %(default)s)".lstrip()


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


def client_main(argv: Sequence[str] | None = None) -> int:
    """`dino-mlops` of dino-mlops-client: CLIENT_COMMANDS run; any other command is one line on stderr, exit 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(CLIENT_DISTRIBUTION)
    full_only = sorted(set(subcommands(parser)) - CLIENT_COMMANDS)
    parser.epilog = (f"Example:\n  {EXAMPLES['infer']}\n\nThis client-only install ({CLIENT_DISTRIBUTION}) runs: "
                     f"{', '.join(sorted(CLIENT_COMMANDS))}.\nThe other commands need the full platform: "
                     f"pip install {FULL_DISTRIBUTION}")
    command = next((arg for arg in argv if not arg.startswith("-")), None)  # top-level options take no value
    if command in full_only:
        print(f"dino-mlops: error: `dino-mlops {command}` needs the full platform: pip install {FULL_DISTRIBUTION}",
              file=sys.stderr)
        return 2
    return run(parser, argv)


def subcommands(parser: argparse.ArgumentParser) -> list[str]:
    """The names of the parser's commands (the words right after `dino-mlops`)."""
    return [name for action in parser._actions if isinstance(action, argparse._SubParsersAction)
            for name in action.choices]


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse `argv`, set up logging and run the chosen command; a DinoError is one line, exit code 2."""
    args = parser.parse_args(argv)
    import os

    setup_logging(logging.DEBUG if args.verbose else logging.INFO, rank=int(os.environ.get("RANK", 0)))
    try:
        return int(args.func(args) or 0)
    except DinoError as exc:
        print(f"dino-mlops: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
