"""`dino-mlops eval ...`: evaluations of a trained checkpoint, each writing a metrics JSON."""

from __future__ import annotations

import argparse

from dino_model.cli.options import add_config_args, config_from_args, print_result


def register(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("eval", help="evaluate a checkpoint").add_subparsers(dest="eval_command", required=True)
    knn = ev.add_parser("knn", help="weighted k-NN on frozen teacher features (DINO protocol)")
    knn.add_argument("--checkpoint", required=True, help="training checkpoint or official DINO weights")
    knn.add_argument("--train-dir", help="labelled image folder for the memory bank (default data.knn_train)")
    knn.add_argument("--val-dir", help="labelled image folder to score (default data.knn_val)")
    knn.add_argument("--output", help="metrics JSON path (default: beside the checkpoint)")
    add_config_args(knn)
    knn.set_defaults(func=run_knn)


def run_knn(args: argparse.Namespace) -> int:
    from dino_model.eval.knn_eval import run_knn_eval

    cfg = config_from_args(args)
    result = run_knn_eval(
        args.checkpoint, cfg.eval, train_dir=args.train_dir or cfg.data.knn_train,
        val_dir=args.val_dir or cfg.data.knn_val, output=args.output,
    )
    print_result(result)
    return 0
