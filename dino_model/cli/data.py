"""`dino-mlops data ...`: data versions tracked by data.dvc (snapshot, pull, status, diff, log, remotes),
packing image folders into tar shards (`data shard`), the form DVC handles at ImageNet scale, and images
captured from serving (`data capture ...`, dino_model/cli/capture.py)."""

from __future__ import annotations

import argparse

from dino_model.cli.options import data_repo_root, print_result


def register(sub: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--repo", help="repository root (default: the nearest folder above holding .dvc/)")
    common.add_argument("--site-cache-dir", help="DVC site cache (default $DVC_SITE_CACHE_DIR, else /var/tmp/dvc)")
    remote_arg = argparse.ArgumentParser(add_help=False)
    remote_arg.add_argument("--remote", "-r", help="DVC remote name (default: the configured default remote)")

    data = sub.add_parser("data", help="versioned data (DVC)").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("init", parents=[common], help="create .dvc/ with a local default remote (stages nothing)")
    p.add_argument("--remote-dir", help="directory of the default local remote (default: .dvc-remote/)")
    p.set_defaults(func=run_init)
    p = data.add_parser("status", parents=[common, remote_arg], help="the recorded version and what changed")
    p.add_argument("--limit", type=int, default=20, help="paths listed per kind of change")
    p.set_defaults(func=run_status)
    p = data.add_parser("snapshot", parents=[common, remote_arg], help="record data/ as a version and push it")
    p.add_argument("-m", "--message", help="also commit data.dvc to git with this message")
    p.set_defaults(func=run_snapshot)
    p = data.add_parser("pull", parents=[common, remote_arg], help="put a data version into data/")
    p.add_argument("version", nargs="?", help="git revision or data md5 (default: what data.dvc records)")
    p.add_argument("--force", action="store_true", help="discard changes in data/ that no version records")
    p.set_defaults(func=run_pull)
    p = data.add_parser("diff", parents=[common, remote_arg], help="files added, removed, modified")
    p.add_argument("old", nargs="?", help="git revision or md5 (default: what data.dvc records)")
    p.add_argument("new", nargs="?", default="workspace", help="git revision, md5 or 'workspace' (default)")
    p.add_argument("--limit", type=int, help="paths listed per kind of change (default: all)")
    p.set_defaults(func=run_diff)
    p = data.add_parser("log", parents=[common], help="commits that changed data.dvc, newest first")
    p.add_argument("-n", "--max-count", type=int, help="at most this many")
    p.set_defaults(func=run_log)
    p = data.add_parser("ensure", parents=[common, remote_arg],
                        help="pull the recorded version, or rebuild the default data set and push it")
    p.add_argument("--source", default="digits", help="packaged data set to rebuild (default: digits)")
    p.set_defaults(func=run_ensure)
    p = data.add_parser("materialize", help="write a packaged data set (digits, faces, samples) as image folders")
    p.add_argument("name", help="digits | faces | samples")
    p.add_argument("root", help="output folder; receives train/ and val/ class folders")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of images in val/ (stratified)")
    p.add_argument("--seed", type=int, default=0, help="split seed")
    p.set_defaults(func=run_materialize)
    p = data.add_parser("shard", help="pack an image folder into WebDataset tar shards with a shards.json index")
    p.add_argument("src", help="image folder: class sub-folders (labels kept), or flat (unlabelled)")
    p.add_argument("out", help="output folder; receives shard-000000.tar ... and shards.json")
    p.add_argument("--shard-size", help="close a shard before it passes this size, e.g. 64MB or 1GB "
                                        "(default: 256MB, data.shards.DEFAULT_SHARD_BYTES)")
    p.add_argument("--max-per-shard", type=int, help="at most this many images per shard (default: no limit)")
    p.set_defaults(func=run_shard)
    _register_remote(data, common)
    from dino_model.cli import capture

    capture.register(data, common, remote_arg)


def _register_remote(data: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    remote = data.add_parser("remote", help="DVC remotes").add_subparsers(dest="remote_command", required=True)
    p = remote.add_parser("add", parents=[common], help="add or replace a remote")
    p.add_argument("name")
    p.add_argument("url", help="local path, or s3://bucket/prefix (needs: pip install 'dino-mlops[s3]')")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint, e.g. http://minio:9000")
    p.add_argument("--region", help="S3 region")
    p.add_argument("--default", "-d", action="store_true", help="make it the default remote")
    p.add_argument("--local", action="store_true", help="write to .dvc/config.local (this machine only)")
    p.add_argument("--store-credentials", action="store_true",
                   help="copy AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY from the environment to .dvc/config.local")
    p.set_defaults(func=run_remote_add)
    p = remote.add_parser("list", parents=[common], help="configured remotes")
    p.set_defaults(func=run_remote_list)
    p = remote.add_parser("default", parents=[common], help="choose the default remote")
    p.add_argument("name")
    p.add_argument("--local", action="store_true", help="write to .dvc/config.local (this machine only)")
    p.set_defaults(func=run_remote_default)


def run_init(args: argparse.Namespace) -> int:
    from dino_model.versioning import init_repo

    root = init_repo(data_repo_root(args, search="none"), remote_dir=args.remote_dir)
    print_result({"repo": str(root), "config": str(root / ".dvc" / "config")})
    return 0


def run_status(args: argparse.Namespace) -> int:
    from dino_model.versioning import status

    print_result(status(data_repo_root(args), remote=args.remote, limit=args.limit))
    return 0


def run_snapshot(args: argparse.Namespace) -> int:
    from dino_model.versioning import snapshot

    print_result(snapshot(data_repo_root(args), args.message, remote=args.remote).to_dict())
    return 0


def run_pull(args: argparse.Namespace) -> int:
    from dino_model.versioning import checkout_version

    print_result(checkout_version(data_repo_root(args), args.version, remote=args.remote, force=args.force).to_dict())
    return 0


def run_diff(args: argparse.Namespace) -> int:
    from dino_model.versioning import diff

    print_result(diff(data_repo_root(args), args.old, args.new, remote=args.remote).to_dict(limit=args.limit))
    return 0


def run_log(args: argparse.Namespace) -> int:
    from dino_model.versioning import history

    entries = history(data_repo_root(args), max_count=args.max_count)
    print_result({"versions": [{**e.version.to_dict(), "date": e.date, "subject": e.subject} for e in entries]})
    return 0


def run_ensure(args: argparse.Namespace) -> int:
    from dino_model.versioning import default_data_root, ensure_default_data

    root = data_repo_root(args, search="fallback")
    version = ensure_default_data(root, source=args.source, remote=args.remote)
    print_result({**version.to_dict(), "data_root": str(default_data_root(root, args.source))})
    return 0


def run_materialize(args: argparse.Namespace) -> int:
    from dino_model.data.materialize import materialize

    root = materialize(args.name, args.root, val_fraction=args.val_fraction, seed=args.seed)
    print_result({"root": str(root), **{s: str(root / s) for s in ("train", "val") if (root / s).is_dir()}})
    return 0


def run_shard(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dino_model.data.shards import DEFAULT_SHARD_BYTES, INDEX_NAME, pack_folder, parse_size

    shard_bytes = parse_size(args.shard_size) if args.shard_size else DEFAULT_SHARD_BYTES
    index = pack_folder(args.src, args.out, shard_bytes=shard_bytes, max_per_shard=args.max_per_shard)
    print_result({"index": str(Path(args.out) / INDEX_NAME), "shards": len(index.shards), "images": index.total,
                  "skipped": index.skipped, "classes": len(index.classes)})
    return 0


def run_remote_add(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from dino_model.versioning import add_remote

    info = add_remote(data_repo_root(args), args.name, args.url, endpoint_url=args.endpoint_url, default=args.default,
                      local=args.local, store_credentials=args.store_credentials, region=args.region)
    print_result(asdict(info))
    return 0


def run_remote_list(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from dino_model.versioning import list_remotes

    print_result({"remotes": [asdict(r) for r in list_remotes(data_repo_root(args))]})
    return 0


def run_remote_default(args: argparse.Namespace) -> int:
    from dino_model.versioning.remotes import set_default_remote

    set_default_remote(data_repo_root(args), args.name, local=args.local)
    print_result({"default": args.name})
    return 0
