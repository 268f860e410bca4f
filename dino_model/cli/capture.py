"""`dino-mlops data capture ...`: what capture kept (list), erasing it (erase, expire), and making it
a data version (snapshot). Registered under `data` by dino_model/cli/data.py.

The store is `--store`, else DINO_CAPTURE_STORE: the same variable the serving side reads, so an
operator's commands act on the store serving writes to.
"""

from __future__ import annotations

import argparse
import os
from datetime import UTC, datetime

from dino_model.cli.options import data_repo_root, print_result

STORE_ENV = "DINO_CAPTURE_STORE"


def register(data: argparse._SubParsersAction, common: argparse.ArgumentParser,
             remote_arg: argparse.ArgumentParser) -> None:
    store_arg = argparse.ArgumentParser(add_help=False)
    store_arg.add_argument("--store", default=os.environ.get(STORE_ENV, ""),
                           help=f"capture store: a folder or s3://bucket/prefix (default: ${STORE_ENV})")
    capture = data.add_parser("capture", help="images captured from serving").add_subparsers(
        dest="capture_command", required=True)
    p = capture.add_parser("list", parents=[store_arg], help="captured images per day")
    p.set_defaults(func=run_list)
    p = capture.add_parser("erase", parents=[store_arg], help="delete captured images: by day, by image, or all")
    p.add_argument("--day", action="append", default=[], help="a captured day, YYYY-MM-DD (repeatable)")
    p.add_argument("--before", help="every day before this one, YYYY-MM-DD")
    p.add_argument("--sha256", action="append", default=[], help="an image's content hash (repeatable)")
    p.add_argument("--image", action="append", default=[], help="an image file: its captured copies (repeatable)")
    p.add_argument("--all", action="store_true", help="every captured image")
    p.set_defaults(func=run_erase)
    p = capture.add_parser("expire", parents=[store_arg], help="delete the days past the retention limit")
    p.add_argument("--retention-days", type=int, help="keep this many days, today included "
                   "(default: DINO_CAPTURE_RETENTION_DAYS or 30)")
    p.set_defaults(func=run_expire)
    p = capture.add_parser("snapshot", parents=[common, remote_arg, store_arg],
                           help="add new captured images under data/captured/<day>/ as a committed data version")
    p.add_argument("--checkpoint", required=True,
                   help="the model whose copy-detection descriptor finds near duplicates (the served one)")
    p.add_argument("--day", action="append", default=None, help="only this captured day (repeatable)")
    p.add_argument("--similarity", type=float, help="near-duplicate cosine similarity "
                   "(default: calibrated on the data set)")
    p.add_argument("-m", "--message", help="commit message (default: counts and days)")
    p.add_argument("--device", default="cpu", help="device for the embeddings")
    p.set_defaults(func=run_snapshot)


def _store(args: argparse.Namespace):
    from dino_model.capture import CaptureStore

    return CaptureStore(args.store)


def run_list(args: argparse.Namespace) -> int:
    store = _store(args)
    print_result({"store": store.url, "days": {day: store.count(day) for day in store.days()}})
    return 0


def run_erase(args: argparse.Namespace) -> int:
    from dino_model.capture import day_of
    from dino_model.errors import ConfigError

    store = _store(args)
    if not (args.day or args.before or args.sha256 or args.image or args.all):
        raise ConfigError("say what to erase: --day, --before, --sha256, --image or --all")
    days = set(store.days()) if args.all else {day_of(d) for d in args.day}
    if args.before:
        days |= {d for d in store.days() if d < day_of(args.before)}
    hashes = set(args.sha256) | {_file_hash(path) for path in args.image}
    erased_days = store.erase_days(sorted(d for d in days if d in store.days()))
    images = store.erase_hashes(hashes) if hashes else 0
    print_result({"store": store.url, "erased_days": erased_days, "erased_images": images})
    return 0


def _file_hash(path: str) -> str:
    import hashlib
    from pathlib import Path

    from dino_model.errors import DataError

    if not Path(path).is_file():
        raise DataError(f"no such image file: {path}")
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run_expire(args: argparse.Namespace) -> int:
    from dino_model.capture import capture_settings

    days = args.retention_days or capture_settings().retention_days
    store = _store(args)
    print_result({"store": store.url, "retention_days": days, "erased_days": store.expire(days, datetime.now(UTC))})
    return 0


def run_snapshot(args: argparse.Namespace) -> int:
    from dino_model.versioning.captured import checkpoint_embedder, snapshot_captured

    root = data_repo_root(args)
    report = snapshot_captured(root, _store(args), checkpoint_embedder(args.checkpoint, device=args.device),
                               days=args.day, similarity=args.similarity, message=args.message,
                               remote=args.remote)
    print_result(report.to_dict())
    return 0
