"""Capture settings: off unless a deployment switches it on, read from Triton parameters or the environment.

Capturing the images users send is a privacy decision made per deployment, so nothing is captured
unless a deployment says so: in its model configuration (`parameters { key: "capture_enabled" ... }`
in config.pbtxt, which Triton hands to a Python backend step as JSON) or in the serving pod's
environment (`DINO_CAPTURE_ENABLED=1`). The environment wins, so an operator can switch capture off
(or on) without rewriting the model repository. Every value is checked once, when the settings are
built, and a bad one is refused with one line naming where it came from.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from dino_model.errors import ConfigError

ENV_PREFIX = "DINO_CAPTURE_"
PARAMETER_PREFIX = "capture_"
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})


@dataclass(frozen=True)
class CaptureSettings:
    """What is captured, how much, where to, and for how long it is kept."""

    enabled: bool = False
    store: str = ""  # a local folder (a mounted claim) or an fsspec URL, e.g. s3://bucket/dvc/captured
    rate: float = 0.01  # the fraction of offered images sampled
    daily_cap: int = 5000  # images stored per UTC day at most
    max_bytes: int = 4 * 1024 * 1024  # encoded images above this size are not captured
    retention_days: int = 30  # captured days older than this are deleted
    queue_size: int = 256  # images waiting for the background writer; more are dropped, never waited for

    def __post_init__(self) -> None:
        if not 0.0 < self.rate <= 1.0 or math.isnan(self.rate):
            raise ConfigError(f"capture rate must be in (0, 1], got {self.rate}")
        for name in ("daily_cap", "max_bytes", "retention_days", "queue_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"capture {name} must be at least 1, got {getattr(self, name)}")
        if self.enabled and not self.store:
            raise ConfigError("capture is enabled but no store is set: set DINO_CAPTURE_STORE "
                              "(a folder or s3://bucket/prefix) or the capture_store parameter")


def _parse(name: str, text: str, kind: type, origin: str) -> Any:
    text = text.strip()
    if kind is bool:
        if text.lower() in TRUE_WORDS:
            return True
        if text.lower() in FALSE_WORDS:
            return False
        raise ConfigError(f"{origin} must be one of 1/0, true/false, yes/no, on/off, got {text!r}")
    try:
        return kind(text.replace("_", "")) if kind is int else kind(text)
    except ValueError:
        raise ConfigError(f"{origin} must be a {kind.__name__}, got {text!r}") from None


def _field_types() -> dict[str, type]:
    types = {"bool": bool, "str": str, "float": float, "int": int}
    return {f.name: types[str(f.type)] for f in fields(CaptureSettings)}


def parameters_of(model_config: Mapping[str, Any]) -> dict[str, str]:
    """Triton's `parameters` map ({key: {"string_value": v}}) of a model configuration, as plain strings."""
    values = model_config.get("parameters", {}) or {}
    return {key: (value.get("string_value", "") if isinstance(value, Mapping) else str(value))
            for key, value in values.items()}


def capture_settings(parameters: Mapping[str, str] | None = None,
                     env: Mapping[str, str] | None = None) -> CaptureSettings:
    """Defaults, then `capture_*` model parameters, then `DINO_CAPTURE_*` environment variables."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for name, kind in _field_types().items():
        key, var = PARAMETER_PREFIX + name, ENV_PREFIX + name.upper()
        if parameters and key in parameters:
            values[name] = _parse(name, parameters[key], kind, f"model parameter {key}")
        if var in env:
            values[name] = _parse(name, env[var], kind, f"environment variable {var}")
    return replace(CaptureSettings(), **values) if values else CaptureSettings()
