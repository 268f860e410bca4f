"""Argument helpers shared by subcommands: the config files plus `a.b=value` overrides, the lineage flags."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any


def add_config_args(parser: argparse.ArgumentParser, *, default: str = "default", checkpoint: bool = False) -> None:
    """--config and overrides; `checkpoint=True`: both layer over the config saved in --checkpoint."""
    if checkpoint:
        parser.add_argument(
            "--config", action="append", default=None,
            help="YAML config file or packaged name over the checkpoint's saved config (repeatable, later wins; "
                 "default: the saved config alone)",
        )
        parser.add_argument("overrides", nargs="*", help="config overrides such as eval.knn_k=[20]; applied last")
        return
    parser.add_argument(
        "--config", action="append", default=None,
        help=f"YAML config file or packaged name (repeatable, later wins; default: {default})",
    )
    parser.add_argument("overrides", nargs="*", help="config overrides such as train.epochs=5")


def add_renamed(parser: argparse.ArgumentParser, name: str, *old: str, **kwargs: Any) -> argparse.Action:
    """`name` as the option, `old` spellings still accepted but left out of --help."""
    action = parser.add_argument(name, **kwargs)
    alias = {k: v for k, v in kwargs.items() if k in ("action", "type", "choices", "nargs", "const")}
    parser.add_argument(*old, dest=action.dest, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **alias)
    return action


def config_from_args(args: argparse.Namespace, *extra: str, default: str = "default"):
    from dino_model.config import load_config

    files = args.config or ([] if default == "default" else [default])
    return load_config(*files, overrides=[*args.overrides, *extra])


def checkpoint_config_from_args(args: argparse.Namespace):
    """The checkpoint's saved config, then --config files, then overrides (dino_model.eval.settings)."""
    from dino_model.eval.settings import checkpoint_config

    return checkpoint_config(args.checkpoint, args.config or [], args.overrides)


def print_result(result: dict[str, Any]) -> None:
    """The command's result on stdout as indented, strictly valid JSON.

    NaN and Infinity are not JSON: a reader either fails on them or, worse, reads a monitor's NaN as a
    number. A result holding one is a bug, so it raises (ValueError) before anything is written.
    """
    text = json.dumps(result, indent=2, default=str, allow_nan=False)
    sys.stdout.write(text)
    sys.stdout.write("\n")


def add_lineage_args(p: argparse.ArgumentParser) -> None:
    after_export = p.prog.split()[-1] != "export"
    note = "; overrides the export record, so the lineage is served unverified" if after_export else ""
    p.add_argument("--data-version", default="", help=f"DVC md5 of the training data (default: recorded one){note}")
    p.add_argument("--metrics", action="append", default=[], help=f"metrics-JSON report(s) (repeatable){note}")


def lineage_from_args(args: argparse.Namespace) -> dict[str, str]:
    from dino_model.export.lineage import read_metrics

    lineage = {"data_version": args.data_version}
    if args.metrics:
        lineage["metrics"] = json.dumps(read_metrics(args.metrics), sort_keys=True)
    return lineage


def data_repo_root(args: argparse.Namespace, *, search: str = "required"):
    """--repo, else the nearest repository above the working directory ("required"), else the working
    directory itself ("fallback": found or not; "none": never searched)."""
    from pathlib import Path

    from dino_model.errors import DataError
    from dino_model.versioning import find_repo_root

    if args.site_cache_dir:
        os.environ["DVC_SITE_CACHE_DIR"] = args.site_cache_dir
    if args.repo:
        return Path(args.repo).resolve()
    if search == "none":
        return Path.cwd()
    try:
        return find_repo_root()
    except DataError:
        if search == "fallback":
            return Path.cwd()
        raise
