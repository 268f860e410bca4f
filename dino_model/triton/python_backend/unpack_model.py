"""Triton Python-backend step before DALI: encoded images as BYTES in, one zero-padded UINT8 row each out.

Copied as `model.py` into the version folder of `<model>_unpack` (the `gpu` flavour with DALI, see
dino_model/triton/dali.py), beside preprocessing.py. DALI's backend takes UINT8 tensors, while every
client of the image entry point sends Triton's BYTES; this step bridges the two without decoding: it
reads each header (a readable image, within the pixel cap DINO_MAX_IMAGE_PIXELS) and fails a request
with INVALID_ARG naming the item otherwise, then pads the items of a request to its longest one
(decoders stop at their own end marker). `received` is the same capture hook as the Python step's.
"""

import importlib.util
import json
import sys
from pathlib import Path

import triton_python_backend_utils as pb_utils


def _sibling(name):
    """The module `name`.py shipped beside this file (the stub does not put this folder on sys.path)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


preprocessing = _sibling("preprocessing")
versions = _sibling("versions")
capture_hook = _sibling("capture_hook")
drift_share = _sibling("drift_share")


class TritonPythonModel:
    """Check the headers of each request's items and pad them into one UINT8 tensor."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.max_pixels = preprocessing.pixel_cap_from_environment()
        (spec,) = config["input"]
        (out,) = config["output"]
        self.input_name, self.output_name = spec["name"], out["name"]
        self.embedding_model = params["embedding_model"]
        self.repository = Path(args["model_repository"]).parent
        window = drift_share.WindowReader(drift_share.share_path(self.embedding_model))  # the drift step's latest
        self.capture = capture_hook.open_capture(config, self.served_version, _log_error, drift_score=window.score)

    def execute(self, requests):
        responses = []
        for request in requests:
            items = [bytes(item) for item in
                     pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy().reshape(-1)]
            self.received(items)
            try:
                rows = preprocessing.padded_rows(items, self.max_pixels)
            except preprocessing.UnreadableImageError as exc:
                error = _invalid_argument(f"input '{self.input_name}': {exc}")
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, rows)]))
        return responses

    def received(self, items):
        """The raw encoded images of one request, before anything reads them: offered to capture when on."""
        if self.capture is not None:
            self.capture.offer(items)

    def served_version(self):
        """The version of the embedding model that unpinned requests reach now (None when none is ready)."""
        return versions.served_version(pb_utils, self.repository, self.embedding_model)

    def finalize(self):
        if self.capture is not None:
            self.capture.close()


def _invalid_argument(message):
    """A TritonError with the INVALID_ARG code where the stub supports codes (Triton >= 23.08)."""
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)


def _log_error(message):
    logger = getattr(pb_utils, "Logger", None)
    if logger is not None:
        logger.log_error(message)
