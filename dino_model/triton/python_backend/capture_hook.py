"""Capture of served images from the image entry point's first step, for the data flywheel.

Shipped beside the step's `model.py` (Triton's stub imports it from the version folder). The steps
import no project code, and with capture off (the default) this stays true: the switch is read here
from the model's `capture_enabled` parameter and the `DINO_CAPTURE_ENABLED` environment variable (the
environment wins, as in dino_model/capture/settings.py). Only a deployment that switches capture on
imports `dino_model.capture`, which ships in both installs (`dino-mlops` and `dino-mlops-client`),
so a Triton image with either has it. When it is missing the step logs one error and serves without
capture; a setting the library refuses (no store, a rate out of range) stops the step's start with its
one-line message, as a deployment's other bad settings do. Once serving, a capture problem (a full
queue, a failing store) never fails a request.

The drift score of an image's window is computed by the drift step, after the embedding model, in
another process; this first step offers an image before that step has seen it, so the score recorded
is the one of the latest window the drift step completed for the served version (mmd2 / threshold, the
ratio the drift alert compares with 1), which the drift step shares through a small file of this
server (drift_share.py); null before the first full window, for another version, or when the shared
window is older than drift_share.MAX_AGE_S (docs/operations.md, "Image capture").

The served version is asked of Triton at most once a second (VERSION_TTL_S), not per request, so
capture adds one in-process call per item to the request path (Sampler.offer: a size check, a random
draw, a bounded-queue put); everything slow runs on the sampler's writer thread.
"""

import os
import time

ENABLED_PARAMETER = "capture_enabled"
ENABLED_VARIABLE = "DINO_CAPTURE_ENABLED"
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
VERSION_TTL_S = 1.0


def switched_on(model_config, env=None):
    """True when the deployment asks for capture (DINO_CAPTURE_ENABLED, else the capture_enabled parameter)."""
    env = os.environ if env is None else env
    if ENABLED_VARIABLE in env:
        value = env[ENABLED_VARIABLE]
    else:
        value = model_config.get("parameters", {}).get(ENABLED_PARAMETER, {}).get("string_value", "")
    return value.strip().lower() in TRUE_WORDS


def open_sampler(model_config, log_error, env=None):
    """The capture sampler for this step, or None when capture is off or its library is missing (logged)."""
    if not switched_on(model_config, env):
        return None
    try:
        from dino_model.capture import sampler_from_model_config
    except ImportError as exc:
        log_error(f"capture is switched on but dino_model.capture cannot be imported ({exc}); serving "
                  "without capture: install dino-mlops-client (or dino-mlops) in the Triton image")
        return None
    return sampler_from_model_config(model_config, env)  # a refused setting stops the step's start, one line


def open_capture(model_config, served_version, log_error, drift_score):
    """The step's Capture (served_version() and drift_score(version) as Capture takes them), or None when off."""
    sampler = open_sampler(model_config, log_error)
    return None if sampler is None else Capture(sampler, served_version, log_error, drift_score=drift_score)


class Capture:
    """Offers each received image to the sampler with the served version; never raises into a request."""

    def __init__(self, sampler, served_version, log_error, clock=time.monotonic, drift_score=None):
        self.sampler = sampler
        self._served_version = served_version
        self._drift_score = (lambda version: None) if drift_score is None else drift_score
        self._log_error = log_error
        self._clock = clock
        self._version = None
        self._asked_at = None
        self._failed = False

    def version(self):
        """The served version as a string, asked of Triton at most once per VERSION_TTL_S."""
        now = self._clock()
        if self._asked_at is None or now - self._asked_at >= VERSION_TTL_S:
            self._version, self._asked_at = self._served_version(), now
        return "" if self._version is None else str(self._version)

    def offer(self, items):
        try:
            version = self.version()
            score = self._drift_score(version)
            for item in items:
                self.sampler.offer(item, model_version=version, drift_score=score)
        except Exception as exc:
            if not self._failed:  # once, not per request
                self._failed = True
                self._log_error(f"capture failed and is skipped for this request (serving goes on): {exc!r}")

    def close(self):
        try:
            self.sampler.close()
        except Exception as exc:
            self._log_error(f"capture: could not write the queued images at shutdown: {exc!r}")
