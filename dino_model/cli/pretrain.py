"""`dino-mlops pretrain`: DINO pretraining from a YAML config plus overrides, on 1..N processes of this
node, or with `--cluster` on several nodes as a Kubeflow Trainer v2 TrainJob or a Training Operator v1
PyTorchJob."""

from __future__ import annotations

import argparse

from dino_model.cli.options import add_config_args, config_from_args, print_result


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="self-supervised DINO pretraining")
    add_config_args(p)
    p.add_argument("--output-dir", help="shortcut for train.output_dir=...")
    p.add_argument("--resume", action="store_true", help="continue from output_dir/checkpoint.pth")
    p.add_argument("--allow-config-change", action="store_true",
                   help="resume although optimisation settings (lr, epochs, ...) differ from the checkpoint's "
                        "(shortcut for train.allow_config_change=true)")
    p.add_argument("--nproc", type=int, default=None,
                   help="processes on this node (torchrun; one per GPU, or gloo on CPU; default 1)")
    c = p.add_argument_group(
        "cluster", "with --cluster: create a TrainJob (--operator trainer-v2, on the TrainingRuntime of "
                   "k8s/jobs/trainjob) or a PyTorchJob from k8s/jobs/pretrain (as an overlay renders it), wait "
                   "for it and print the checkpoint path on the runs claim (/runs/<job>/checkpoint.pth). Without "
                   "--config the overlay's trainer config is used; overrides apply either way.")
    c.add_argument("--cluster", action="store_true", help="train on Kubernetes instead of this machine")
    c.add_argument("--overlay", default="prod-gpu",
                   help="overlay whose pretrain/ folder is rendered (dev, prod-gpu) or a kustomization folder "
                        "(default: prod-gpu)")
    c.add_argument("--operator", choices=("trainer-v2", "training-operator-v1"), default="training-operator-v1",
                   help="Kubeflow Trainer v2 (TrainJob) or Training Operator v1 (PyTorchJob); "
                        "default: training-operator-v1")
    c.add_argument("--runtime", metavar="DIR",
                   help="kustomization of the TrainJob's training runtime (default: k8s/jobs/trainjob)")
    c.add_argument("--template", metavar="FILE",
                   help="an already rendered template (kubectl kustomize k8s/overlays/<env>/pretrain > FILE) "
                        "instead of --overlay")
    c.add_argument("--nodes", type=int, help="nodes: 1 Master + N-1 Workers (default: the template's)")
    c.add_argument("--nproc-per-node", type=int,
                   help="trainer processes per node, one per GPU (default: the template's)")
    c.add_argument("--gpus", action=argparse.BooleanOptionalAction, default=None,
                   help="request nproc-per-node GPUs per node and train on CUDA (default: as the template does)")
    c.add_argument("--run-id", help="names the job dino-pretrain-<run id>; the same id adopts an existing job "
                                    "(default: time and a random suffix)")
    c.add_argument("--namespace", help="default: the template's")
    c.add_argument("--image", help="trainer image (default: the template's)")
    c.add_argument("--data-root", help="data.root inside the pods, under /data (default: the config's)")
    c.add_argument("--data-claim", help="claim mounted at /data (default: the template's)")
    c.add_argument("--data-subpath", help="folder of the data claim mounted at /data")
    c.add_argument("--runs-claim", help="claim mounted at /runs (default: the template's)")
    c.add_argument("--timeout", type=float,
                   help="hours to wait for the job (default: cluster.launch's, a week)")
    c.add_argument("--poll", type=float, help="seconds between status reads (default: cluster.launch's, 30)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.cluster:
        return run_on_cluster(args)
    extra = [f"train.output_dir={args.output_dir}"] if args.output_dir else []
    if args.allow_config_change:
        extra.append("train.allow_config_change=true")
    cfg = config_from_args(args, *extra)
    from dino_model.train.worker import launch_training

    result = launch_training(cfg, nproc=args.nproc or 1, resume=args.resume)
    print_result(result)
    return 0


def run_on_cluster(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dino_model.errors import ConfigError
    from dino_model.train import cluster

    if args.output_dir or args.nproc is not None:
        raise ConfigError("with --cluster the run folder is /runs/<job> and processes are --nproc-per-node: "
                          "drop --output-dir and --nproc")
    if any(value is not None and value <= 0 for value in (args.timeout, args.poll)):
        raise ConfigError(f"--timeout and --poll must be positive, got {args.timeout} and {args.poll}")
    options = cluster.JobOptions(
        name=cluster.job_name(args.run_id or cluster.new_run_id()), nodes=args.nodes,
        nproc_per_node=args.nproc_per_node, gpus=args.gpus, image=args.image, namespace=args.namespace,
        data_claim=args.data_claim, data_subpath=args.data_subpath, runs_claim=args.runs_claim,
        env=cluster.env_pairs({"DINO_RUN_ID": args.run_id or ""}),
    )
    cluster.validate_options(options)  # before rendering or connecting
    if args.template:
        resources = cluster.parse_rendered(Path(args.template).read_text())
    else:
        resources = cluster.render_overlay(args.overlay)
    extra = ["train.allow_config_change=true"] if args.allow_config_change else []
    cfg = config_from_args(args, *extra) if args.config else None
    runtime = cluster.render_runtime(args.runtime) if args.operator == cluster.TRAINER_V2 else None
    result = cluster.launch(resources, options, cfg, operator=args.operator, runtime=runtime,
                            overrides=[*args.overrides, *extra], data_root=args.data_root, **_wait_options(args))
    print_result(result)
    return 0


def _wait_options(args: argparse.Namespace) -> dict[str, float]:
    """--timeout (hours) and --poll (seconds) as cluster.launch's keywords, only those given."""
    options = {"timeout_s": args.timeout * 3600 if args.timeout else None, "poll_s": args.poll}
    return {key: value for key, value in options.items() if value is not None}
