"""`dino-mlops pretrain`: DINO pretraining from a YAML config plus overrides, on 1..N processes."""

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
    p.add_argument("--nproc", type=int, default=1,
                   help="processes on this node (torchrun; one per GPU, or gloo on CPU)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    extra = [f"train.output_dir={args.output_dir}"] if args.output_dir else []
    if args.allow_config_change:
        extra.append("train.allow_config_change=true")
    cfg = config_from_args(args, *extra)
    from dino_model.train.worker import launch_training

    result = launch_training(cfg, nproc=args.nproc, resume=args.resume)
    print_result(result)
    return 0
