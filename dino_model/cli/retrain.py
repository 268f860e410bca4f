"""`dino-mlops retrain check|watch`: start training when a new DVC data version lands.

Settings come from flags or, for the Kubernetes CronJob, from the environment: DINO_DATA_REPO,
DINO_DATA_REV, KFP_HOST, DINO_TRITON_URL, DINO_RETRAIN_STATE.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

from dino_model.cli.options import print_result

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("retrain", help="submit a training run when the data version changes")
    cmds = group.add_subparsers(dest="retrain_command", required=True)
    for name, helptext in (("check", "check once"), ("watch", "check every --interval seconds")):
        p = cmds.add_parser(name, help=helptext)
        p.add_argument("--repo", default=os.environ.get("DINO_DATA_REPO", "."), help="data repository (git + DVC)")
        p.add_argument("--rev", default=os.environ.get("DINO_DATA_REV", "HEAD"),
                       help="git revision whose data.dvc is tracked; 'workspace' reads the working tree")
        p.add_argument("--fetch", action="store_true", help="git fetch before reading the revision")
        p.add_argument("--host", default=os.environ.get("KFP_HOST", ""), help="KFP API; submits a pipeline run")
        p.add_argument("--local", action="store_true", help="run the pipeline on this machine (kfp.local)")
        p.add_argument("--triton-url", default=os.environ.get("DINO_TRITON_URL", ""),
                       help="serving Triton (gRPC host:port), whose model lineage names the deployed data version")
        p.add_argument("--state", default=os.environ.get("DINO_RETRAIN_STATE", "runs/retrain/state.json"))
        p.add_argument("--timeout", type=float, default=float(os.environ.get("DINO_KFP_TIMEOUT", "120")),
                       help="seconds a KFP submission may take before the check gives up (the trigger stays pending)")
        p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="pipeline parameter")
        if name == "watch":
            p.add_argument("--interval", type=float, default=60.0)
            p.add_argument("--max-checks", type=int, default=0, help="stop after N checks (0: never)")
        p.set_defaults(func=run_check if name == "check" else run_watch)


def run_check(args: argparse.Namespace) -> int:
    print_result(_check_once(args))
    return 0


def run_watch(args: argparse.Namespace) -> int:
    n = 0
    while True:
        result = _check_once(args)
        logger.info("retrain check: %s", result)
        n += 1
        if args.max_checks and n >= args.max_checks:
            print_result(result)
            return 0
        time.sleep(args.interval)


def _check_once(args: argparse.Namespace) -> dict:
    from dino_model.errors import ConfigError
    from dino_model.retrain import check, deployed_data_version, kfp_submitter
    from dino_model.versioning.repo import git
    from dino_model.versioning.versions import current_version, version_at
    from pipelines.submit import parse_params

    if bool(args.host) == bool(args.local):
        raise ConfigError("give exactly one of --host URL (or KFP_HOST) and --local")
    repo = Path(args.repo).resolve()
    if args.fetch:
        git(repo, "fetch", "--quiet")
    current = current_version(repo) if args.rev == "workspace" else version_at(repo, args.rev)
    deployed = deployed_data_version(args.triton_url) if args.triton_url else None
    params = parse_params(args.param)
    if args.local:
        submit = _local_submitter(repo, params)
    else:
        submit = kfp_submitter(args.host, params=params, timeout_s=args.timeout)
    return check(current.md5, state_path=args.state, submit=submit, deployed_md5=deployed)


def _local_submitter(repo: Path, params: dict):
    def submit(md5: str) -> str:
        from pipelines.local import run_local

        result = run_local(repo, **params)
        return result["run_dir"]

    return submit
