"""The `dino-mlops` command: one argparse tree, one module per subcommand group.

Each module in COMMAND_MODULES exposes `register(subparsers)`, adding its parsers with a
`func(args) -> int` default. A DinoError becomes one line on stderr and exit code 2; results go
to stdout, logs to stderr.
"""

from __future__ import annotations

import argparse
import importlib
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
    "dino_model.cli.serving",
    "dino_model.cli.monitoring",
    "dino_model.cli.pipeline",
    "dino_model.cli.retrain",
)

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dino-mlops", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import os

    setup_logging(logging.DEBUG if args.verbose else logging.INFO, rank=int(os.environ.get("RANK", 0)))
    try:
        return int(args.func(args) or 0)
    except DinoError as exc:
        print(f"dino-mlops: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
