"""`dino-mlops export | triton-repo`: from a checkpoint to an ONNX file (or timm weights) and a Triton repository."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from dino_model.cli.options import add_lineage_args, lineage_from_args, print_result
from dino_model.errors import ExportError
from dino_model.export.options import FORMATS, ExportOptions, onnx_only_set
from dino_model.triton.config import RepositoryOptions

# the ONNX-only ExportOptions fields and their flags
ONNX_FLAGS = {"patch_tokens": "--patch-tokens", "fp16": "--fp16", "opset": "--opset",
              "parity_images": "--parity-images", "n_random": "--parity-random", "tolerance": "--tolerance",
              "score_drift_on": "--score-drift-on"}


def _option(name: str, of: type = RepositoryOptions) -> Any:
    """The default of field `name` of the options dataclass `of`, so that a flag's default lives in one place."""
    field = next(f for f in dataclasses.fields(of) if f.name == name)
    return field.default_factory() if field.default is dataclasses.MISSING else field.default


def register(sub: argparse._SubParsersAction) -> None:
    _register_export(sub)
    _register_repo(sub)


def _register_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export the teacher backbone: one self-contained ONNX file, parity-checked, "
                                      "or timm weights (.safetensors) with a model card")
    p.add_argument("--checkpoint", required=True, help="training checkpoint or official DINO weights")
    p.add_argument("--output", required=True,
                   help="onnx: the .onnx file to write (a <stem>.export.json report lands beside); "
                        "safetensors: the .safetensors file (its model card <stem>.md lands beside)")
    p.add_argument("--format", choices=FORMATS, default=FORMATS[0],
                   help="onnx: for Triton; safetensors: the backbone's weights for plain timm and torch.hub")
    p.add_argument("--image-size", type=int, help="input resolution (default: the checkpoint's eval.image_size)")
    onnx = p.add_argument_group("ONNX only", "refused with --format safetensors")
    onnx.add_argument("--patch-tokens", action="store_true", help="add the patch_tokens output (B, N, D)")
    onnx.add_argument("--fp16", action="store_true", help="also write <stem>.fp16.onnx for GPUs (FP32 in and out)")
    onnx.add_argument("--opset", type=int, default=_option("opset", ExportOptions),
                      help="ONNX opset (default %(default)s: runs on Triton 23.04 and later)")
    onnx.add_argument("--parity-images", help="image folder for the parity check (default: the run's data)")
    onnx.add_argument("--parity-random", type=int, default=_option("n_random", ExportOptions),
                      help="random inputs in the parity check")
    onnx.add_argument("--tolerance", type=float, default=_option("tolerance", ExportOptions),
                      help="max |PyTorch - onnxruntime| in fp32")
    onnx.add_argument("--score-drift-on", metavar="FOLDER", action="append", default=[],
                      help="captured images (<day>/ sub-folders, newest first): the report's metrics gain "
                           "captured_drift_ratio, their drift against the new drift reference (repeatable)")
    add_lineage_args(p)
    p.set_defaults(func=run_export)


def _register_repo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("triton-repo", help="write (or add a version to) a Triton model repository")
    p.add_argument("--onnx", required=True, help="file written by `dino-mlops export`")
    p.add_argument("--repository", required=True, help="model repository root")
    p.add_argument("--flavour", choices=("gpu", "cpu"), default=_option("flavour"),
                   help="gpu: onnxruntime backend, KIND_GPU; cpu: Python backend running onnxruntime, KIND_CPU")
    p.add_argument("--model-name", default=_option("model_name"))
    p.add_argument("--version", type=int, help="version folder (default: one above the highest present)")
    p.add_argument("--max-batch-size", type=int, default=_option("max_batch_size"))
    p.add_argument("--preferred-batch-sizes", type=int, nargs="*", default=_option("preferred_batch_sizes"))
    p.add_argument("--queue-delay-us", type=int, default=_option("max_queue_delay_us"),
                   help="dynamic batching max_queue_delay_microseconds (default: gpu 100, cpu 0)")
    p.add_argument("--no-dynamic-batching", action="store_true")
    p.add_argument("--instances", type=int, default=_option("instance_count"),
                   help="model instances (instance_group count; default: gpu 1, cpu one per usable CPU here, "
                        "at most 4)")
    p.add_argument("--instance-kind", choices=("gpu", "cpu"), default=_option("instance_kind"),
                   help="override the flavour's instance kind (gpu flavour on CPUs: NVIDIA's image without GPUs)")
    p.add_argument("--keep-versions", type=int, default=_option("keep_versions"),
                   help="version_policy latest { num_versions }")
    p.add_argument("--no-warmup", action="store_true")
    p.add_argument("--tensorrt", action="store_true", help="gpu: TensorRT execution accelerator")
    p.add_argument("--tensorrt-precision", choices=("FP16", "FP32"), default=_option("tensorrt_precision"))
    p.add_argument("--tensorrt-cache", default=_option("tensorrt_cache_path"),
                   help="engine cache path (mount a volume)")
    p.add_argument("--intra-op-threads", type=int, default=_option("intra_op_threads"),
                   help="cpu: onnxruntime threads per instance (default 0: the serving machine's usable CPUs "
                        "shared out among the instances)")
    p.add_argument("--image-preprocess", choices=("auto", "python", "dali"), default=_option("image_preprocess"),
                   help="preprocessing step of the image entry point <model>_images: auto = DALI on the gpu flavour "
                        "where nvidia-dali is installed, else the Python step")
    p.add_argument("--no-entry-points", action="store_true",
                   help="write the model alone, without the <model>_images and <model>_monitored ensembles")
    p.add_argument("--capture", action="store_true", default=_option("capture"),
                   help="switch image capture on in the repository (capture_enabled in the first step of "
                        "<model>_images); the server still needs DINO_CAPTURE_STORE, and its "
                        "DINO_CAPTURE_ENABLED wins")
    add_lineage_args(p)
    p.set_defaults(func=run_repo)


def run_export(args: argparse.Namespace) -> int:
    opts = ExportOptions(patch_tokens=args.patch_tokens, fp16=args.fp16, opset=args.opset, image_size=args.image_size,
                         parity_images=args.parity_images, n_random=args.parity_random, tolerance=args.tolerance,
                         metrics_reports=args.metrics, data_version=args.data_version,
                         score_drift_on=args.score_drift_on)
    if args.format == "safetensors":
        refused = [ONNX_FLAGS[name] for name in onnx_only_set(opts)]
        if refused:
            raise ExportError(f"{', '.join(refused)} only apply to --format onnx, not to --format safetensors")
        from dino_model.export.safetensors_run import export_safetensors

        print_result(export_safetensors(args.checkpoint, args.output, opts))
        return 0
    if args.output.endswith(".safetensors"):
        raise ExportError(f"--output {args.output} is a .safetensors file: add --format safetensors")
    from dino_model.export.export_run import export_checkpoint

    print_result(export_checkpoint(args.checkpoint, args.output, opts))
    return 0


def run_repo(args: argparse.Namespace) -> int:
    from dino_model.triton.config import RepositoryOptions
    from dino_model.triton.repository import write_model_repository

    opts = RepositoryOptions(
        flavour=args.flavour, model_name=args.model_name, max_batch_size=args.max_batch_size,
        dynamic_batching=not args.no_dynamic_batching, preferred_batch_sizes=args.preferred_batch_sizes,
        max_queue_delay_us=args.queue_delay_us, instance_count=args.instances, instance_kind=args.instance_kind,
        keep_versions=args.keep_versions,
        warmup=not args.no_warmup, tensorrt=args.tensorrt, tensorrt_precision=args.tensorrt_precision,
        tensorrt_cache_path=args.tensorrt_cache, intra_op_threads=args.intra_op_threads,
        image_preprocess=args.image_preprocess, entry_points=not args.no_entry_points, capture=args.capture,
    )
    print_result(write_model_repository(args.onnx, args.repository, opts, version=args.version,
                                        lineage=lineage_from_args(args)))
    return 0
