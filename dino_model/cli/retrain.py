"""`dino-mlops retrain check|watch`: start training when a new DVC data version lands.

Settings come from flags or, for the Kubernetes CronJob, from the environment: DINO_DATA_REPO,
DINO_DATA_REV, KFP_HOST, DINO_TRITON_URL, DINO_TRITON_REPOSITORY, DINO_RETRAIN_STATE,
DINO_RETRAIN_WORKDIR, DINO_GIT_TIMEOUT. A pod holds no checkout: when the repository is a git URL,
each check clones it into a scratch folder (credentials from DINO_GIT_USERNAME/DINO_GIT_TOKEN), reads
data.dvc at the revision and removes the clone, and the submitted run is told the same URL
(`data_repo`) and the md5 (`data_version`).

What the run is made of (its pipeline parameters DINO_PARAM_<name>, KFP_NAMESPACE, the registered
DINO_PIPELINE, DINO_IMAGE, the retry policy) is the overlay's ConfigMap, read as one
`RetrainSettings` (pipelines/retrain_settings.py); a flag given here replaces its entry.

With DINO_CAPTURE_STORE set, each check first makes the flywheel's one decision (pipelines/flywheel.py):
snapshot captured images into a new data version, or not; the data version is read after it.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from dino_model.cli.options import add_renamed, print_result
from dino_model.runtime import git

if TYPE_CHECKING:
    from pipelines.retrain_settings import RetrainSettings

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("retrain", help="submit a training run when the data version changes")
    cmds = group.add_subparsers(dest="retrain_command", required=True)
    for name, helptext in (("check", "check once"), ("watch", "check every --interval seconds")):
        p = cmds.add_parser(name, help=helptext)
        p.add_argument("--repo", default=os.environ.get("DINO_DATA_REPO", "."),
                       help="data repository (git + DVC): a local checkout, or a git URL cloned for each check")
        p.add_argument("--rev", default=os.environ.get("DINO_DATA_REV", "HEAD"),
                       help="git revision (branch) whose data.dvc is tracked; 'workspace' reads the working tree")
        p.add_argument("--fetch", action="store_true", help="git fetch before reading the revision")
        p.add_argument("--workdir", default=os.environ.get("DINO_RETRAIN_WORKDIR", ""),
                       help="scratch folder for the clone of a git URL (default: the system's temporary folder)")
        p.add_argument("--git-timeout", type=float,
                       default=float(os.environ.get("DINO_GIT_TIMEOUT", git.DEFAULT_TIMEOUT_S)),
                       help="seconds a git clone or fetch may take")
        p.add_argument("--namespace", default=None,
                       help="KFP multi-user profile namespace of every KFP call (default: $KFP_NAMESPACE; "
                            "none: standalone KFP)")
        p.add_argument("--registered", default=None, metavar="NAME@VERSION",
                       help="run this registered pipeline version (default: $DINO_PIPELINE; none: compile one)")
        p.add_argument("--image", default=None,
                       help="image of a pipeline compiled for the run (default: $DINO_IMAGE, else the built-in tag)")
        p.add_argument("--experiment", default=None,
                       help="KFP experiment (default: $DINO_KFP_EXPERIMENT or dino-mlops)")
        p.add_argument("--max-attempts", type=int, default=None,
                       help="runs per data version when they fail (default: $DINO_RETRAIN_MAX_ATTEMPTS or 3)")
        p.add_argument("--backoff", type=float, default=None,
                       help="seconds before the 2nd attempt, doubling after (default: $DINO_RETRAIN_BACKOFF_S or 1800)")
        p.add_argument("--host", default=os.environ.get("KFP_HOST", ""), help="KFP API; submits a pipeline run")
        p.add_argument("--local", action="store_true", help="run the pipeline on this machine (kfp.local)")
        add_renamed(p, "--url", "--triton-url", default=os.environ.get("DINO_TRITON_URL", ""),
                    help="serving Triton (gRPC host:port), whose model lineage names the deployed data version")
        p.add_argument("--triton-repository", default=os.environ.get("DINO_TRITON_REPOSITORY", ""),
                       help="that Triton's model repository, when mounted here: a deploy killed midway is finished "
                            "(rolled forward or back) before the lineage is read")
        p.add_argument("--state", default=os.environ.get("DINO_RETRAIN_STATE", "runs/retrain/state.json"))
        p.add_argument("--timeout", type=float, default=float(os.environ.get("DINO_KFP_TIMEOUT", "120")),
                       help="seconds a KFP submission may take before the check gives up (the trigger stays pending)")
        p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                       help="pipeline parameter, over $DINO_PARAM_<KEY> (with --local, only these are passed)")
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
    from dino_model.versioning.clone import data_repository, is_git_url, public_url, tracked_rev
    from dino_model.versioning.versions import current_version, version_at
    from pipelines.retrain import check, deployed_data_version, kfp_run_state, kfp_submitter
    from pipelines.submit import parse_params

    if bool(args.host) == bool(args.local):
        raise ConfigError("give exactly one of --host URL (or KFP_HOST) and --local")
    settings = None if args.local else run_settings(args)
    params = dict(settings.params) if settings else parse_params(args.param)
    remote = is_git_url(args.repo)
    if remote and args.rev == "workspace":
        raise ConfigError(f"--rev workspace needs a local checkout, not the git URL {public_url(args.repo)}")
    if remote and args.local:
        raise ConfigError("--local runs the pipeline on a local checkout: give --repo PATH, not a git URL")
    with data_repository(args.repo, workdir=args.workdir, timeout_s=args.git_timeout, fetch=args.fetch) as repo:
        flywheel = _flywheel(args, repo, remote)
        if args.rev == "workspace":
            current = current_version(repo)
        else:
            current = version_at(repo, tracked_rev(repo, args.rev) if remote else args.rev)
    if settings is not None and made_by_flywheel(args.state, current.md5):
        params = settings.flywheel.params(params)
        logger.info("data version %s is the flywheel's snapshot: the run continues from the served weights (%s)",
                    current.md5, " ".join(settings.flywheel.overrides))
    repository = args.triton_repository or None
    deployed = deployed_data_version(args.url, repository=repository) if args.url else None
    if args.local:
        result = check(current.md5, state_path=args.state, submit=_local_submitter(repo, params),
                       deployed_md5=deployed)
    else:
        if remote:
            params.setdefault("data_repo", public_url(args.repo))
        submit = kfp_submitter(args.host, params=params, experiment=settings.experiment, timeout_s=args.timeout,
                               namespace=settings.namespace, registered=settings.registered, image=settings.image)
        result = check(current.md5, state_path=args.state, submit=submit, deployed_md5=deployed,
                       run_state=kfp_run_state(args.host, timeout_s=args.timeout, namespace=settings.namespace),
                       retry=settings.retry)
    return result | ({"flywheel": asdict(flywheel)} if flywheel else {})


def made_by_flywheel(state_path: str | Path, md5: str) -> bool:
    """Whether `md5` is the data version the flywheel's last snapshot made (flywheel.json beside the state)."""
    from pipelines.flywheel import STATE_FILE, read_flywheel_state

    return read_flywheel_state(Path(state_path).parent / STATE_FILE).last_snapshot_version == md5


def _flywheel(args: argparse.Namespace, repo: Path, remote: bool):
    """The flywheel's decision of this check (pipelines/flywheel.py); None when no capture store is set."""
    from dino_model.versioning.clone import tracked_rev
    from pipelines.flywheel import flywheel_settings_from_env, flywheel_step

    settings = flywheel_settings_from_env()
    if not settings.enabled:
        return None
    rev = tracked_rev(repo, args.rev) if remote else None
    return flywheel_step(repo, settings=settings, state_path=args.state, triton_url=args.url, rev=rev,
                         git_timeout_s=args.git_timeout)


def run_settings(args: argparse.Namespace) -> RetrainSettings:
    """The environment's RetrainSettings with the flags given on the command line in place of its entries.

    An empty flag (`--namespace ""`) clears the entry.
    """
    from pipelines.retrain_settings import RetrainSettings, RetryPolicy, settings_from_env
    from pipelines.submit import parse_params

    env = settings_from_env()

    def pick(flag: str | None, current: str | None) -> str | None:
        return current if flag is None else (flag or None)

    retry = RetryPolicy(max_attempts=env.retry.max_attempts if args.max_attempts is None else args.max_attempts,
                        backoff_s=env.retry.backoff_s if args.backoff is None else args.backoff)
    return RetrainSettings(params={**env.params, **parse_params(args.param)},
                           namespace=pick(args.namespace, env.namespace),
                           registered=pick(args.registered, env.registered), image=pick(args.image, env.image),
                           experiment=args.experiment or env.experiment, retry=retry, flywheel=env.flywheel)


def _local_submitter(repo: Path, params: dict):
    def submit(md5: str, attempt: int = 1) -> str:
        from pipelines.local import run_local

        result = run_local(repo, **params)
        return result["run_dir"]

    return submit
