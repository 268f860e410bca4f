"""`dino-mlops eval ...`: evaluations of a trained checkpoint, each writing a metrics JSON.

knn and linear score frozen features on labelled image folders; davis propagates first-frame
masks through DAVIS videos and scores J and F; attention renders the last block's CLS attention;
retrieval ranks a labelled folder by feature similarity (mAP, recall@k); copydetection finds the
originals of strongly edited copies among distractors.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from dino_model.cli.options import add_config_args, checkpoint_config_from_args, print_result
from dino_model.eval.davis.config import FEATURE_SOURCES, MASK_FORMATS, DavisConfig, PropagationParams
from dino_model.eval.search_settings import COPY_EDITS, CopyDetectionConfig, RetrievalConfig
from dino_model.eval.settings import ATTENTION_IMAGE_SIZE, ATTENTION_THRESHOLD, LinearProbeConfig


def _default(cls: type, name: str) -> Any:
    """The default of dataclass field `name`: flags repeat no number the library already holds."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    return field.default_factory() if field.default is dataclasses.MISSING else field.default


def register(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("eval", help="evaluate a checkpoint").add_subparsers(dest="eval_command", required=True)
    knn = ev.add_parser("knn", help="weighted k-NN on frozen teacher features (DINO protocol)")
    knn.add_argument("--checkpoint", required=True, help="training checkpoint or official DINO weights")
    knn.add_argument("--train-dir", help="labelled image folder for the memory bank (default data.knn_train)")
    knn.add_argument("--val-dir", help="labelled image folder to score (default data.knn_val)")
    knn.add_argument("--output", help="metrics JSON path (default: beside the checkpoint)")
    add_config_args(knn, checkpoint=True)
    knn.set_defaults(func=run_knn)
    _register_linear(ev)
    _register_davis(ev)
    _register_attention(ev)
    _register_retrieval(ev)
    _register_copydetection(ev)


def _register_linear(ev: argparse._SubParsersAction) -> None:
    p = ev.add_parser("linear", help="linear probe on frozen features (DINO eval_linear protocol)")
    p.add_argument("--checkpoint", required=True, help="training checkpoint or official DINO weights")
    p.add_argument("--train-dir", help="labelled folder the classifier is trained on (default data.knn_train)")
    p.add_argument("--val-dir", help="labelled folder it is scored on (default data.knn_val)")
    p.add_argument("--output", help="metrics JSON path (default: beside the checkpoint); weights go beside it")
    p.add_argument("--epochs", type=int, default=_default(LinearProbeConfig, "epochs"))
    p.add_argument("--lr", type=float, default=_default(LinearProbeConfig, "lr"),
                   help="per 256 images, scaled by the batch size")
    p.add_argument("--batch-size", type=int, default=_default(LinearProbeConfig, "batch_size"))
    p.add_argument("--n-last-blocks", type=int, help="CLS tokens of the last n blocks (default 4; 1 for ViT-B)")
    p.add_argument("--avgpool", action=argparse.BooleanOptionalAction, default=None,
                   help="append the average-pooled patch tokens (default: only for ViT-B)")
    p.add_argument("--no-augment", action="store_true",
                   help="centre crops only: features are computed once and cached (fast on CPU)")
    p.add_argument("--random-init", action="store_true", help="baseline: a randomly initialised backbone")
    p.add_argument("--seed", type=int, default=_default(LinearProbeConfig, "seed"))
    p.add_argument("--head", metavar="PATH",
                   help="score this trained classifier on --val-dir instead of training one: official linear "
                        "weights (state_dict of module.linear.*) or a linear.pth of this command")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    add_config_args(p, checkpoint=True)
    p.set_defaults(func=run_linear)


def _register_davis(ev: argparse._SubParsersAction) -> None:
    p = ev.add_parser("davis", help="DAVIS 2017 video object segmentation by label propagation (J&F)")
    p.add_argument("--checkpoint", help="ViT checkpoint whose patch features propagate (not needed for colour)")
    p.add_argument("--davis-root", required=True, help="folder with JPEGImages/, Annotations/, ImageSets/")
    p.add_argument("--output-dir", required=True, help="results PNGs, CSVs, davis.json and davis.md go here")
    p.add_argument("--sequences", nargs="+", help="sequence names (default: ImageSets/2017/<split>.txt)")
    p.add_argument("--split", default=_default(DavisConfig, "split"))
    p.add_argument("--resolution", default=_default(DavisConfig, "resolution"))
    p.add_argument("--annotations", default=_default(DavisConfig, "annotations"),
                   help="annotation folder name under the root")
    p.add_argument("--mask-format", default=_default(DavisConfig, "mask_format"), choices=MASK_FORMATS,
                   help="2016: grayscale 0/255 masks read as object 1; auto detects them")
    p.add_argument("--short-side", type=_optional_int, default=_default(DavisConfig, "short_side"),
                   help="resize short side, or 'none' to keep")
    p.add_argument("--size-multiple", type=int, default=_default(DavisConfig, "size_multiple"),
                   help="long side floored to a multiple of this")
    p.add_argument("--max-frames", type=int, help="propagate and score only the first N frames of each video")
    p.add_argument("--n-last-frames", type=int, default=_default(PropagationParams, "n_last_frames"))
    p.add_argument("--neighbourhood", type=int, default=_default(PropagationParams, "neighbourhood"),
                   help="source window radius in patches (0: none)")
    p.add_argument("--topk", type=int, default=_default(PropagationParams, "topk"))
    p.add_argument("--temperature", type=float, default=_default(PropagationParams, "temperature"))
    p.add_argument("--features", default=_default(DavisConfig, "features"), choices=FEATURE_SOURCES,
                   help="colour: model-free oracle")
    p.add_argument("--oracle-patch-size", type=int, default=_default(DavisConfig, "oracle_patch_size"))
    p.add_argument("--score-only", action="store_true", help="score existing <output-dir>/results only")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.set_defaults(func=run_davis)


def _register_attention(ev: argparse._SubParsersAction) -> None:
    p = ev.add_parser("attention", help="last-block CLS self-attention maps per head, as PNG overlays")
    p.add_argument("--checkpoint", required=True, help="ViT checkpoint or official DINO weights")
    p.add_argument("--image", nargs="+", required=True, help="input image(s)")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--image-size", type=int, nargs=2, default=ATTENTION_IMAGE_SIZE, metavar=("H", "W"),
                   help="resize to H x W before the model (the official size)")
    p.add_argument("--native-size", action="store_true", help="keep each image's own size instead")
    p.add_argument("--threshold", type=_optional_float, default=ATTENTION_THRESHOLD,
                   help="keep this fraction of each head's attention mass as a mask, or 'none'")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.set_defaults(func=run_attention)


def _register_retrieval(ev: argparse._SubParsersAction) -> None:
    p = ev.add_parser("retrieval", help="nearest-neighbour image retrieval on frozen teacher features (mAP, recall@k)")
    p.add_argument("--checkpoint", required=True, help="training checkpoint or official DINO weights")
    p.add_argument("--database-dir", help="labelled image folder searched (default data.knn_train)")
    p.add_argument("--query-dir", help="labelled folder of queries; positives: database images of the same class "
                                       "name (default: none, the database is searched leave-one-out)")
    p.add_argument("--recall-k", type=int, nargs="+", default=_default(RetrievalConfig, "recall_ks"),
                   help="cut-offs of recall@k and mP@k")
    p.add_argument("--output", help="metrics JSON path (default: beside the checkpoint)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    add_config_args(p, checkpoint=True)
    p.set_defaults(func=run_retrieval)


def _register_copydetection(ev: argparse._SubParsersAction) -> None:
    p = ev.add_parser("copydetection", help="find the originals of strongly edited copies among distractors "
                                            "(CLS + GeM features, whitening; mAP, recall@1)")
    p.add_argument("--checkpoint", required=True, help="training checkpoint or official DINO weights")
    p.add_argument("--images", help="image folder: seeded originals are edited into queries, the rest are "
                                    "distractors (default data.knn_val)")
    p.add_argument("--originals", type=int, default=_default(CopyDetectionConfig, "originals"),
                   help="images held out as originals")
    p.add_argument("--edits", nargs="+", choices=COPY_EDITS, default=_default(CopyDetectionConfig, "edits"),
                   metavar="EDIT", help=f"one query per original and edit, of: {', '.join(COPY_EDITS)}")
    p.add_argument("--seed", type=int, default=_default(CopyDetectionConfig, "seed"),
                   help="picks the originals and every edit's parameters")
    p.add_argument("--gem-p", type=float, default=_default(CopyDetectionConfig, "gem_p"),
                   help="GeM exponent of the pooled patch tokens")
    p.add_argument("--no-whitening", action="store_true", help="rank raw features (no PCA whitening)")
    p.add_argument("--whiten-dim", type=int, help="whitening components kept (default: min(feature dim, "
                                                  "distractors - 1))")
    p.add_argument("--output", help="metrics JSON path (default: beside the checkpoint)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    add_config_args(p, checkpoint=True)
    p.set_defaults(func=run_copydetection)


def run_knn(args: argparse.Namespace) -> int:
    from dino_model.eval.knn_run import run_knn_eval

    cfg = checkpoint_config_from_args(args)
    result = run_knn_eval(
        args.checkpoint, cfg.eval, train_dir=args.train_dir or cfg.data.knn_train,
        val_dir=args.val_dir or cfg.data.knn_val, output=args.output,
    )
    print_result(result)
    return 0


def run_linear(args: argparse.Namespace) -> int:
    from dino_model.eval.linear_run import run_linear_eval

    cfg = checkpoint_config_from_args(args)
    probe = LinearProbeConfig(n_last_blocks=args.n_last_blocks, avgpool_patchtokens=args.avgpool, epochs=args.epochs,
                              lr=args.lr, batch_size=args.batch_size, augment=not args.no_augment, seed=args.seed)
    if args.head:
        return _score_linear_head(args, cfg, probe)
    result = run_linear_eval(
        args.checkpoint, cfg.eval, train_dir=args.train_dir or cfg.data.knn_train,
        val_dir=args.val_dir or cfg.data.knn_val, probe=probe, output=args.output,
        device=_device(args.device), random_init=args.random_init,
    )
    print_result(_summary(result))
    return 0


def _score_linear_head(args: argparse.Namespace, cfg: Any, probe: LinearProbeConfig) -> int:
    from dino_model.errors import ConfigError
    from dino_model.eval.linear_run import run_linear_head_eval

    if args.random_init:
        raise ConfigError("--head scores a trained classifier on the checkpoint's backbone; drop --random-init")
    result = run_linear_head_eval(args.checkpoint, args.head, cfg.eval, val_dir=args.val_dir or cfg.data.knn_val,
                                  probe=probe, output=args.output, device=_device(args.device))
    print_result(_summary(result))
    return 0


def run_davis(args: argparse.Namespace) -> int:
    from dino_model.eval.davis.run import run_davis_eval

    cfg = DavisConfig(
        sequences=list(args.sequences or []), split=args.split, resolution=args.resolution,
        annotations=args.annotations, mask_format=args.mask_format, short_side=args.short_side,
        size_multiple=args.size_multiple, max_frames=args.max_frames, features=args.features,
        oracle_patch_size=args.oracle_patch_size,
        propagation=PropagationParams(n_last_frames=args.n_last_frames, neighbourhood=args.neighbourhood,
                                      topk=args.topk, temperature=args.temperature),
    )
    result = run_davis_eval(args.checkpoint, cfg, davis_root=args.davis_root, output_dir=args.output_dir,
                            device=_device(args.device), score_only=args.score_only)
    print_result(_summary(result))
    return 0


def run_attention(args: argparse.Namespace) -> int:
    from dino_model.eval.attention import run_attention_maps

    result = run_attention_maps(args.checkpoint, args.image, output_dir=args.output_dir,
                                image_size=None if args.native_size else tuple(args.image_size),
                                threshold=args.threshold,
                                device=_device(args.device))
    print_result(_summary(result))
    return 0


def run_retrieval(args: argparse.Namespace) -> int:
    from dino_model.eval.retrieval_run import run_retrieval_eval

    settings = RetrievalConfig(recall_ks=args.recall_k)  # ranges checked before the checkpoint is read
    cfg = checkpoint_config_from_args(args)
    result = run_retrieval_eval(args.checkpoint, cfg.eval, database_dir=args.database_dir or cfg.data.knn_train,
                                query_dir=args.query_dir, settings=settings, output=args.output,
                                device=_device(args.device))
    print_result(_summary(result))
    return 0


def run_copydetection(args: argparse.Namespace) -> int:
    from dino_model.eval.copydetection_run import run_copydetection_eval

    settings = CopyDetectionConfig(originals=args.originals, edits=list(args.edits), seed=args.seed,
                                   gem_p=args.gem_p, whitening=not args.no_whitening, whiten_dim=args.whiten_dim)
    cfg = checkpoint_config_from_args(args)  # after the ranges: a bad option is refused before the checkpoint is read
    result = run_copydetection_eval(args.checkpoint, cfg.eval, images_dir=args.images or cfg.data.knn_val,
                                    settings=settings, output=args.output, device=_device(args.device))
    print_result(_summary(result))
    return 0


def _summary(result: dict) -> dict:
    """What the command prints: the envelope without the bulky details (they stay in the JSON)."""
    return {k: v for k, v in result.items() if k != "details"}


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _optional_int(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def _optional_float(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)
