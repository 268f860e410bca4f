"""Capture of served images for the self-supervised data flywheel (docs/operations.md, "Image capture").

DINO needs no labels, so images users send are training data: this package samples them, off by
default, into a capture store (a folder or an object-store prefix). It depends on numpy, Pillow and
the standard library only (fsspec for URLs), so the serving side's Triton Python backend step can
import it. Turning captured images into a data version is `dino_model.versioning.captured`.

The hook in a Triton Python backend step that receives encoded images is one call per image:

    def initialize(self, args):
        self.capture = sampler_from_model_config(json.loads(args["model_config"]))  # off unless switched on
    def execute(self, requests):
        ...  # for each request's encoded image bytes, after reading them:
        self.capture.offer(image_bytes, model_version=self.version, drift_score=self.drift.last_ratio)
    def finalize(self):
        self.capture.close()  # writes what is queued
"""

from dino_model.capture.sampler import Sampler, image_header, sampler_from_model_config
from dino_model.capture.settings import CaptureSettings, capture_settings, parameters_of
from dino_model.capture.store import CapturedImage, CaptureStore, day_of

__all__ = ["CaptureSettings", "CaptureStore", "CapturedImage", "Sampler", "capture_settings", "day_of",
           "image_header", "parameters_of", "sampler_from_model_config"]
