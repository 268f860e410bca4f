"""Triton model configurations for the exported embedding model: one contract, two flavours.

`gpu` is for the cluster's official Triton image (onnxruntime backend, KIND_GPU instances, optional
TensorRT execution accelerator with an engine cache and explicit shape profiles; `instance_kind=cpu`
runs the same backend on CPUs, for NVIDIA's image on a cluster without GPUs); `cpu` is for a
Triton without the onnxruntime backend, such as the binary in nvidia-pytriton: the Python backend
runs the same ONNX file with onnxruntime (python_backend/model.py). Both take `images` FP32
[-1, 3, S, S] and answer `embedding` FP32 [-1, D]. Configurations are built as dicts and validated
against Triton's own `model_config.proto` (shipped in tritonclient) before they are written, so a
misspelt field fails here rather than at load time.

A model name becomes a folder of the repository and a version a folder below it, so both are checked
wherever they enter (`check_model_name`, `check_version`): a name such as `../x` or `/etc` would
otherwise send a deploy's writes and deletions outside the repository.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from dino_model.errors import ConfigError
from dino_model.export.contract import INPUT_NAME, ModelContract
from dino_model.runtime.cpus import default_instances, usable_cpus

FLAVOURS = ("gpu", "cpu")
CANDIDATE_SUFFIX = "_candidate"  # `dino-mlops deploy` tests a new file as the model `<name>_candidate`
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_VERSION = 2**31 - 1  # room for counters and epoch-second stamps; far below Triton's int64


def check_model_name(name: object) -> str:
    """`name` when it is a safe repository folder name; ConfigError naming the problem otherwise."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"model name {name!r} is empty; give a name such as dino")
    if not MODEL_NAME.fullmatch(name):
        raise ConfigError(f"model name {_shown(name)} is not allowed: use 1 to 64 letters, digits, '_', '-' or '.', "
                          "starting with a letter or digit (it becomes a folder of the model repository)")
    if name.endswith(CANDIDATE_SUFFIX):
        raise ConfigError(f"model name {name!r} ends in {CANDIDATE_SUFFIX!r}, which `dino-mlops deploy` reserves "
                          "for the copy of a model it tests; choose another name")
    return name


def check_version(version: object) -> int:
    """`version` as an int when it is a whole number in 1..MAX_VERSION; ConfigError otherwise."""
    text = str(version).strip()
    if isinstance(version, bool) or not re.fullmatch(r"[+-]?[0-9]+", text):
        raise ConfigError(f"model version {_shown(version)} is not a whole number; versions are 1, 2, 3, ...")
    value = int(text) if len(text) <= 20 else MAX_VERSION + 1  # never int() a pasted blob of digits
    if not 1 <= value <= MAX_VERSION:
        raise ConfigError(f"model version {_shown(text)} is out of range: versions are whole numbers from 1 to "
                          f"{MAX_VERSION}")
    return value


def _shown(value: object, limit: int = 40) -> str:
    """repr of a value for a one-line message, cut when long."""
    text = repr(value) if not isinstance(value, str) or not value.lstrip("+-").isdigit() else value
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


DEFAULT_MODEL_NAME = "dino"  # the model's folder in a repository, and the name Triton serves it under


@dataclass
class RepositoryOptions:
    flavour: str = "gpu"  # gpu | cpu
    model_name: str = DEFAULT_MODEL_NAME
    max_batch_size: int = 64
    dynamic_batching: bool = True
    preferred_batch_sizes: list[int] = field(default_factory=lambda: [8, 16, 32])
    # None: the flavour's; gpu 100 (a GPU gains from fuller batches), cpu 0 (measured: the delay was most of
    # a batch-1 request's queue time, while under load batches still form as requests wait for an instance)
    max_queue_delay_us: int | None = None
    instance_count: int = 0  # 0: gpu 1; cpu one per usable CPU of this machine (runtime/cpus.py), at most 4
    instance_kind: str = ""  # gpu | cpu; default: the flavour's. gpu flavour + cpu = onnxruntime backend on CPUs
    keep_versions: int = 1  # version_policy latest { num_versions }
    warmup: bool = True
    tensorrt: bool = False  # gpu only: ORT's TensorRT execution provider
    tensorrt_precision: str = "FP16"
    tensorrt_cache_path: str = "/tmp/triton-trt-cache"  # mount a persistent volume here on the cluster
    intra_op_threads: int = 0  # cpu only: onnxruntime threads per instance; 0: the serving machine's usable CPUs
    #                            shared out among the instances, chosen by each instance when it loads
    entry_points: bool = True  # the image-bytes and drift-monitored ensembles beside the model (ensemble.py)
    image_preprocess: str = "auto"  # python | dali | auto (dali on the gpu flavour where DALI is installed)
    # capture_enabled "true" in the image entry point's first step (and the drift step, which then shares its
    # window's score with it); the serving environment's DINO_CAPTURE_ENABLED still wins (capture/settings.py)
    capture: bool = False

    def validate(self) -> None:
        check_model_name(self.model_name)
        if self.flavour not in FLAVOURS:
            raise ConfigError(f"flavour {self.flavour!r} is not one of {', '.join(FLAVOURS)}")
        if self.max_batch_size < 1:
            raise ConfigError(f"max_batch_size={self.max_batch_size} must be >= 1 (the batch axis is dynamic)")
        too_big = [b for b in self.preferred_batch_sizes if not 1 <= b <= self.max_batch_size]
        if too_big:
            raise ConfigError(f"preferred batch sizes {too_big} must lie in 1..max_batch_size={self.max_batch_size}")
        if self.keep_versions < 1 or self.instance_count < 0 or self.intra_op_threads < 0:
            raise ConfigError(f"keep_versions={self.keep_versions} must be >= 1, instance_count={self.instance_count} "
                              f"and intra_op_threads={self.intra_op_threads} >= 0 (0 chooses from the CPUs)")
        if self.instance_kind not in ("", "gpu", "cpu"):
            raise ConfigError(f"instance_kind={self.instance_kind!r} is not one of gpu, cpu")
        if self.flavour == "cpu" and self.instance_kind == "gpu":
            raise ConfigError("the cpu flavour (Python backend) runs on CPUs only; use the gpu flavour for GPUs")
        if self.tensorrt and self.kind != "KIND_GPU":
            raise ConfigError("the TensorRT accelerator needs the gpu flavour (onnxruntime backend) on a GPU")
        if self.max_queue_delay_us is not None and self.max_queue_delay_us < 0:
            raise ConfigError(f"max_queue_delay_us={self.max_queue_delay_us} must be >= 0")
        if self.image_preprocess not in ("auto", "python", "dali"):
            raise ConfigError(f"image_preprocess={self.image_preprocess!r} is not one of auto, python, dali")
        if self.image_preprocess == "dali" and self.kind != "KIND_GPU":
            raise ConfigError("DALI preprocessing (image_preprocess=dali) needs the gpu flavour on GPUs")
        if self.tensorrt_precision not in ("FP16", "FP32"):
            raise ConfigError(f"tensorrt_precision={self.tensorrt_precision!r} is not one of FP16, FP32")

    @property
    def queue_delay_us(self) -> int:
        """max_queue_delay_us, or the flavour's default."""
        if self.max_queue_delay_us is not None:
            return self.max_queue_delay_us
        return 0 if self.flavour == "cpu" else 100

    @property
    def instances(self) -> int:
        """instance_count, or its default: 1 on GPUs, one per usable CPU (at most 4) for the cpu flavour."""
        if self.instance_count:
            return self.instance_count
        return default_instances(usable_cpus()) if self.flavour == "cpu" else 1

    @property
    def kind(self) -> str:
        """Triton's instance kind: the flavour's own unless instance_kind overrides it."""
        return f"KIND_{(self.instance_kind or self.flavour).upper()}"


def build_model_config(contract: ModelContract, opts: RepositoryOptions) -> dict[str, Any]:
    """The model configuration as a dict in Triton's JSON form (what `load_model(config=...)` takes)."""
    opts.validate()
    dims = list(contract.input_shape)
    outputs = [{"name": n, "data_type": "TYPE_FP32", "dims": list(contract.output_dims(n))} for n in contract.outputs]
    config: dict[str, Any] = {
        "name": opts.model_name,
        "max_batch_size": opts.max_batch_size,
        "input": [{"name": INPUT_NAME, "data_type": "TYPE_FP32", "dims": dims}],
        "output": outputs,
        "version_policy": {"latest": {"num_versions": opts.keep_versions}},
        "parameters": {k: {"string_value": v} for k, v in contract.to_properties().items()},
    }
    if opts.dynamic_batching:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": opts.queue_delay_us}
        if opts.preferred_batch_sizes:
            config["dynamic_batching"]["preferred_batch_size"] = sorted(opts.preferred_batch_sizes)
    if opts.flavour == "gpu":
        config["platform"] = "onnxruntime_onnx"
        config["instance_group"] = [{"kind": opts.kind, "count": opts.instances}]
        if opts.tensorrt:
            accelerators = {"gpu_execution_accelerator": [_tensorrt(contract, opts)]}
            config["optimization"] = {"execution_accelerators": accelerators}
    else:
        config["backend"] = "python"
        config["instance_group"] = [{"kind": opts.kind, "count": opts.instances}]
        config["parameters"]["intra_op_threads"] = {"string_value": str(opts.intra_op_threads)}
    if opts.warmup:
        sizes = [1] if opts.flavour == "cpu" else sorted({1, max(opts.preferred_batch_sizes, default=1)})
        config["model_warmup"] = [
            {"name": f"zeros_batch{b}", "batch_size": b, "count": 1,
             "inputs": {INPUT_NAME: {"data_type": "TYPE_FP32", "dims": dims, "zero_data": True}}}
            for b in sizes
        ]
    to_proto(config)
    return config


def _tensorrt(contract: ModelContract, opts: RepositoryOptions) -> dict[str, Any]:
    """ORT-TensorRT options: precision, engine cache, and a shape profile over the batch axis."""
    shape = "x".join(str(d) for d in contract.input_shape)
    opt = max(opts.preferred_batch_sizes, default=opts.max_batch_size)
    return {"name": "tensorrt", "parameters": {
        "precision_mode": opts.tensorrt_precision,
        "max_workspace_size_bytes": str(1 << 30),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": opts.tensorrt_cache_path,
        "trt_profile_min_shapes": f"{INPUT_NAME}:1x{shape}",
        "trt_profile_opt_shapes": f"{INPUT_NAME}:{opt}x{shape}",
        "trt_profile_max_shapes": f"{INPUT_NAME}:{opts.max_batch_size}x{shape}",
    }}


def to_proto(config: dict[str, Any]):
    """Parse into Triton's ModelConfig message; ConfigError on a field the schema does not have."""
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2

    try:
        return json_format.ParseDict(config, model_config_pb2.ModelConfig())
    except json_format.ParseError as exc:
        raise ConfigError(f"invalid Triton model configuration: {exc}") from exc


def config_to_text(config: dict[str, Any]) -> str:
    """config.pbtxt text (protobuf text format) of a configuration dict."""
    from google.protobuf import text_format

    return text_format.MessageToString(to_proto(config))


def parse_config_text(text: str, *, source: str = "config.pbtxt") -> dict[str, Any]:
    """A config.pbtxt as a configuration dict (proto field names)."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    try:
        message = text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise ConfigError(f"{source} is not a valid Triton model configuration: {exc}") from exc
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def flavour_of(config: dict[str, Any]) -> str:
    """gpu for the onnxruntime backend, cpu for the Python backend."""
    if config.get("backend") == "python":
        return "cpu"
    if config.get("platform") == "onnxruntime_onnx" or config.get("backend") == "onnxruntime":
        return "gpu"
    raise ConfigError(f"model {config.get('name')!r} uses neither the onnxruntime nor the python backend")


def config_parameters(config: dict[str, Any]) -> dict[str, str]:
    """The string parameters of a configuration (contract and lineage)."""
    return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
