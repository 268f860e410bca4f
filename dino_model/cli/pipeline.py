"""`dino-mlops pipeline compile|submit|run --local|stop-local`: the KFP pipeline from the command line.

kfp and the pipelines package are imported inside the commands, so the library never needs them.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from dino_model.cli.options import print_result
from dino_model.serving.client import GRPC_PORT, HTTP_PORT, METRICS_PORT


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("pipeline", help="compile, submit or run the training pipeline")
    cmds = group.add_subparsers(dest="pipeline_command", required=True)

    p = cmds.add_parser("compile", help="write the pipeline IR YAML to upload in the KFP UI")
    p.add_argument("--output", default="dino_training_pipeline.yaml")
    p.set_defaults(func=run_compile)

    p = cmds.add_parser("submit", help="create a run (or with --schedule a recurring run) on a KFP host")
    p.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://ml-pipeline.kubeflow:8888")
    p.add_argument("--experiment", default="dino-mlops")
    p.add_argument("--run-name", default=None)
    p.add_argument("--schedule", default=None, help="six-field cron with seconds first, e.g. '0 0 2 * * *'")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="pipeline parameter")
    p.add_argument("--registered", default=None, metavar="NAME@VERSION",
                   help="run a pipeline version registered with `pipeline upload` instead of compiling one")
    p.add_argument("--namespace", default=os.environ.get("KFP_NAMESPACE") or None,
                   help="KFP multi-user profile namespace (default: $KFP_NAMESPACE)")
    p.set_defaults(func=run_submit)

    p = cmds.add_parser("upload", help="register the compiled pipeline as a named version in KFP")
    p.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://ml-pipeline.kubeflow:8888")
    p.add_argument("--name", default="dino-training", help="pipeline name in the KFP UI")
    p.add_argument("--version", required=True, help="version name, e.g. the image tag 0.1.0")
    p.add_argument("--namespace", default=os.environ.get("KFP_NAMESPACE") or None,
                   help="KFP multi-user profile namespace (default: $KFP_NAMESPACE)")
    p.set_defaults(func=run_upload)

    p = cmds.add_parser("run", help="run the pipeline; --local runs it on this machine through kfp.local")
    p.add_argument("--local", action="store_true",
                   help="run on this machine through kfp.local (the only place `run` runs; on a cluster use "
                        "`pipeline upload` and `pipeline submit`)")
    p.add_argument("--config", default="digits_vit_tiny", help="training config (path or packaged name)")
    p.add_argument("--min-knn-top1", type=float, default=30.0, help="quality gate threshold (%%)")
    p.add_argument("--allow-worse", action="store_true", help="deploy even if worse than the serving model")
    p.add_argument("--grpc-port", type=int, default=GRPC_PORT)
    p.add_argument("--http-port", type=int, default=HTTP_PORT)
    p.add_argument("--metrics-port", type=int, default=METRICS_PORT)
    p.add_argument("--output-dir", default=None, help="default: runs/local")
    p.add_argument("--pushgateway", default=os.environ.get("DINO_PUSHGATEWAY", ""),
                   help="Pushgateway host:port for the run's metrics (default: $DINO_PUSHGATEWAY, else none)")
    p.add_argument("--containers", action="store_true",
                   help="run every step in the project image through Docker, as a cluster would "
                        "(build it first: bash scripts/image.sh build; DOCKER_HOST as it prints)")
    p.add_argument("--data-repo", default=None,
                   help="git URL of a data repository to train on (default: this checkout's digits version)")
    p.add_argument("--dvc-remote", default="", help="DVC remote of --data-repo (default: its own default remote)")
    p.add_argument("--data-version", default="", help="git revision or md5 in --data-repo (default: its head)")
    p.add_argument("--verbose", action="store_true",
                   help="show every task's full output here (default: stages, epochs, scores and errors; "
                        "everything in <output-dir>/run.log)")
    p.add_argument("overrides", nargs="*", help="training config overrides such as train.epochs=2")
    p.set_defaults(func=run_local_cmd)

    p = cmds.add_parser("stop-local", help="stop the local tritonserver started by `pipeline run --local`")
    p.add_argument("--output-dir", default=None)
    p.set_defaults(func=run_stop_local)


def run_compile(args: argparse.Namespace) -> int:
    from pipelines.submit import compile_pipeline

    print_result({"pipeline": str(compile_pipeline(args.output))})
    return 0


def run_submit(args: argparse.Namespace) -> int:
    from pipelines.submit import parse_params, submit

    print_result(submit(args.host, params=parse_params(args.param), experiment=args.experiment,
                        run_name=args.run_name, schedule=args.schedule, registered=args.registered,
                        namespace=args.namespace))
    return 0


def run_upload(args: argparse.Namespace) -> int:
    from pipelines.submit import upload

    print_result(upload(args.host, version=args.version, name=args.name, namespace=args.namespace))
    return 0


def run_local_cmd(args: argparse.Namespace) -> int:
    import contextlib

    from dino_model.versioning.repo import find_repo_root
    from pipelines.local import LOCAL_DIR, run_local
    from pipelines.run_log import run_log

    if not args.local:
        from dino_model.errors import ConfigError

        raise ConfigError("`pipeline run` runs the pipeline on this machine: add --local. To run it on a cluster, "
                          "register it with `dino-mlops pipeline upload --host URL --version V` and start runs "
                          "with `dino-mlops pipeline submit --host URL` (or from the KFP UI)")
    root = find_repo_root()
    log = (Path(args.output_dir) if args.output_dir else root / LOCAL_DIR) / "run.log"
    with contextlib.nullcontext() if args.verbose else run_log(log):
        result = run_local(root, config=args.config, overrides=args.overrides,
                           min_knn_top1=args.min_knn_top1, require_not_worse=not args.allow_worse,
                           grpc_port=args.grpc_port, http_port=args.http_port, metrics_port=args.metrics_port,
                           output_dir=args.output_dir, pushgateway=args.pushgateway, containers=args.containers,
                           data_repo=args.data_repo, dvc_remote=args.dvc_remote, data_version=args.data_version)
    print_result(result if args.verbose else {**result, "log": str(log)})
    return 0


def run_stop_local(args: argparse.Namespace) -> int:
    from dino_model.versioning.repo import find_repo_root
    from pipelines.local import LOCAL_DIR
    from pipelines.local_server import stop_local_server

    out = Path(args.output_dir) if args.output_dir else find_repo_root() / LOCAL_DIR
    print_result({"stopped": stop_local_server(out / "triton")})
    return 0
