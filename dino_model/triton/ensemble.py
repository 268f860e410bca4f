"""The entry points written beside the embedding model: Triton ensembles for image bytes and for drift.

The embedding model `<model>` takes preprocessed FP32 tensors, which only a client that repeats our
preprocessing exactly can send. Beside it the repository holds, on both flavours:

- `<model>_images`: encoded images in (BYTES `image_bytes`, one JPEG/PNG/WebP per batch item, any
  size), embeddings out: `<model>_preprocess` -> `<model>` -> `<model>_drift`. Any gRPC or HTTP client
  (tritonclient, grpcurl, Go, Java, C++) gets the same embedding as `dino-mlops infer`.
- `<model>_monitored`: the tensor input of `<model>` with the drift step after it, for clients that
  preprocess themselves and want their traffic in the drift gauges (`dino-mlops infer` uses it).

The preprocessing step is a Python-backend model running python_backend/preprocessing.py, the file
the client runs (so the two agree bit for bit); on the `gpu` flavour, where the export finds NVIDIA
DALI, it is DALI's Triton backend instead (dali.py), and the Python step otherwise. The drift step
(python_backend/drift_model.py) is one Python-backend model whatever computes the embedding, so the
`gpu` flavour exports the same dino_embedding_drift_* gauges as the `cpu` one.

Every step names the embedding model with version -1, Triton's "latest ready version", so when
`dino-mlops deploy` switches `<model>` from N to N+1 in one reload, the ensembles follow it with no
change of their own; the steps that need the version ask Triton (python_backend/versions.py).

`RepositoryOptions.capture` (`dino-mlops triton-repo --capture`) writes the parameter
`capture_enabled: "true"` into the image entry point's first step, which then samples the images it
receives into the capture store, and into the drift step, which then shares its latest window with
that step for the captured images' drift score (docs/operations.md, "Image capture").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from dino_model.export.contract import EMBEDDING, INPUT_NAME, ModelContract
from dino_model.triton.config import RepositoryOptions, to_proto
from dino_model.triton.dali import ENCODED, PIXELS

BYTES_INPUT = "image_bytes"  # the image entry point's input: one encoded image per batch item
RAW_EMBEDDING = "raw_embedding"  # the embedding model's answer inside an ensemble, before the drift step
LATEST = -1  # an ensemble step's model_version: the latest ready version
CAPTURE_PARAMETER = "capture_enabled"  # what python_backend/capture_hook.py reads (`triton-repo --capture`)


@dataclass(frozen=True)
class EntryPoints:
    """The model names of the steps and ensembles that serve one embedding model."""

    model: str

    @property
    def images(self) -> str:
        return f"{self.model}_images"

    @property
    def monitored(self) -> str:
        return f"{self.model}_monitored"

    @property
    def preprocess(self) -> str:
        return f"{self.model}_preprocess"

    @property
    def drift(self) -> str:
        return f"{self.model}_drift"

    @property
    def unpack(self) -> str:
        """BYTES -> UINT8 rows before the DALI step (gpu flavour with DALI only)."""
        return f"{self.model}_unpack"

    @property
    def all(self) -> tuple[str, ...]:
        """Every name, steps before the ensembles that use them (the order to load them in)."""
        return self.unpack, self.preprocess, self.drift, self.images, self.monitored


def uses_dali(opts: RepositoryOptions) -> bool:
    """Whether the image entry point preprocesses with DALI: asked for, or `auto` on GPUs with DALI installed."""
    from dino_model.triton.dali import dali_available

    if opts.image_preprocess == "auto":
        return opts.kind == "KIND_GPU" and dali_available()
    return opts.image_preprocess == "dali"


def _batching(opts: RepositoryOptions) -> dict[str, Any]:
    return {"max_queue_delay_microseconds": opts.queue_delay_us} if opts.dynamic_batching else {}


def _string_parameters(values: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {k: {"string_value": v if isinstance(v, str) else json.dumps(v)} for k, v in values.items()}


def _capture(opts: RepositoryOptions) -> dict[str, str]:
    """The capture switch of the steps that read it (python_backend/capture_hook.py); absent: off."""
    return {CAPTURE_PARAMETER: "true"} if opts.capture else {}


def preprocess_config(contract: ModelContract, opts: RepositoryOptions) -> dict[str, Any]:
    """`<model>_preprocess` as a Python-backend step: BYTES in, the model's FP32 input out, on CPUs."""
    names = EntryPoints(opts.model_name)
    config = {
        "name": names.preprocess, "backend": "python", "max_batch_size": opts.max_batch_size,
        "input": [{"name": BYTES_INPUT, "data_type": "TYPE_STRING", "dims": [1]}],
        "output": [{"name": PIXELS, "data_type": "TYPE_FP32", "dims": list(contract.input_shape)}],
        "instance_group": [{"kind": "KIND_CPU", "count": opts.instances}],
        "parameters": _string_parameters({
            "image_size": str(contract.image_size), "resize_size": str(contract.resize_size),
            "mean": list(contract.mean), "std": list(contract.std), "embedding_model": opts.model_name,
            **_capture(opts)}),
    }
    if opts.dynamic_batching:
        config["dynamic_batching"] = _batching(opts)
    to_proto(config)
    return config


def unpack_config(opts: RepositoryOptions) -> dict[str, Any]:
    """`<model>_unpack`: BYTES in, one zero-padded UINT8 row per image out, for DALI (unpack_model.py)."""
    config = {
        "name": EntryPoints(opts.model_name).unpack, "backend": "python", "max_batch_size": opts.max_batch_size,
        "input": [{"name": BYTES_INPUT, "data_type": "TYPE_STRING", "dims": [1]}],
        "output": [{"name": ENCODED, "data_type": "TYPE_UINT8", "dims": [-1]}],
        "instance_group": [{"kind": "KIND_CPU", "count": opts.instances}],
        "parameters": _string_parameters({"embedding_model": opts.model_name, **_capture(opts)}),
    }
    to_proto(config)
    return config


def dali_preprocess_config(contract: ModelContract, opts: RepositoryOptions) -> dict[str, Any]:
    """`<model>_preprocess` as DALI's backend: UINT8 rows in (ragged across requests), the model's input out."""
    config = {
        "name": EntryPoints(opts.model_name).preprocess, "backend": "dali", "max_batch_size": opts.max_batch_size,
        "input": [{"name": ENCODED, "data_type": "TYPE_UINT8", "dims": [-1], "allow_ragged_batch": True}],
        "output": [{"name": PIXELS, "data_type": "TYPE_FP32", "dims": list(contract.input_shape)}],
        "instance_group": [{"kind": "KIND_GPU", "count": opts.instances}],
    }
    if opts.dynamic_batching:
        config["dynamic_batching"] = _batching(opts)
    to_proto(config)
    return config


def drift_config(contract: ModelContract, opts: RepositoryOptions) -> dict[str, Any]:
    """`<model>_drift`: embeddings in and out unchanged, the drift gauges computed on the way (one instance:
    one window per server)."""
    dims = list(contract.output_dims(EMBEDDING))
    config = {
        "name": EntryPoints(opts.model_name).drift, "backend": "python", "max_batch_size": opts.max_batch_size,
        "input": [{"name": EMBEDDING, "data_type": "TYPE_FP32", "dims": dims}],
        "output": [{"name": EMBEDDING, "data_type": "TYPE_FP32", "dims": dims}],
        "instance_group": [{"kind": "KIND_CPU", "count": 1}],
        "parameters": _string_parameters({"embedding_model": opts.model_name, **_capture(opts)}),
    }
    if opts.dynamic_batching:
        config["dynamic_batching"] = _batching(opts)
    to_proto(config)
    return config


def _embedding_steps(contract: ModelContract, model: str, source: str) -> list[dict[str, Any]]:
    """The embedding model fed from ensemble tensor `source`, then the drift step; other outputs pass by."""
    model_outputs = {EMBEDDING: RAW_EMBEDDING} | {name: name for name in contract.outputs if name != EMBEDDING}
    return [
        {"model_name": model, "model_version": LATEST, "input_map": {INPUT_NAME: source}, "output_map": model_outputs},
        {"model_name": EntryPoints(model).drift, "model_version": LATEST, "input_map": {EMBEDDING: RAW_EMBEDDING},
         "output_map": {EMBEDDING: EMBEDDING}},
    ]


def _outputs(contract: ModelContract) -> list[dict[str, Any]]:
    return [{"name": n, "data_type": "TYPE_FP32", "dims": list(contract.output_dims(n))} for n in contract.outputs]


def images_config(contract: ModelContract, opts: RepositoryOptions, *, dali: bool = False) -> dict[str, Any]:
    """`<model>_images`: encoded images -> preprocessing step(s) -> embedding model -> drift step."""
    names = EntryPoints(opts.model_name)
    if dali:
        preprocess = [
            {"model_name": names.unpack, "model_version": LATEST, "input_map": {BYTES_INPUT: BYTES_INPUT},
             "output_map": {ENCODED: ENCODED}},
            {"model_name": names.preprocess, "model_version": LATEST, "input_map": {ENCODED: ENCODED},
             "output_map": {PIXELS: PIXELS}}]
    else:
        preprocess = [{"model_name": names.preprocess, "model_version": LATEST,
                       "input_map": {BYTES_INPUT: BYTES_INPUT}, "output_map": {PIXELS: PIXELS}}]
    config = {
        "name": names.images, "platform": "ensemble", "max_batch_size": opts.max_batch_size,
        "input": [{"name": BYTES_INPUT, "data_type": "TYPE_STRING", "dims": [1]}],
        "output": _outputs(contract),
        "ensemble_scheduling": {"step": [*preprocess, *_embedding_steps(contract, opts.model_name, PIXELS)]},
    }
    to_proto(config)
    return config


def monitored_config(contract: ModelContract, opts: RepositoryOptions) -> dict[str, Any]:
    """`<model>_monitored`: the embedding model's own tensor input, then the drift step."""
    config = {
        "name": EntryPoints(opts.model_name).monitored, "platform": "ensemble", "max_batch_size": opts.max_batch_size,
        "input": [{"name": INPUT_NAME, "data_type": "TYPE_FP32", "dims": list(contract.input_shape)}],
        "output": _outputs(contract),
        "ensemble_scheduling": {"step": _embedding_steps(contract, opts.model_name, INPUT_NAME)},
    }
    to_proto(config)
    return config
