"""Errors the platform raises on bad input, each naming what was received and what would work.

The CLI turns any `DinoError` into one line on stderr and exit code 2; anything else keeps its
traceback, because it is a bug rather than a user mistake.
"""


class DinoError(Exception):
    """Base class of every error caused by input, configuration or environment."""


class ConfigError(DinoError):
    """A configuration key is unknown, mistyped or inconsistent with another key."""


class DataError(DinoError):
    """A data set is missing, empty, unreadable, or a data version cannot be resolved."""


class CheckpointError(DinoError):
    """A checkpoint is missing, corrupt or does not match the model it is loaded into."""


class TrainingDivergedError(DinoError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class ExportError(DinoError):
    """ONNX export failed or the exported model disagrees with PyTorch."""


class ServingError(DinoError):
    """The inference server cannot start, cannot be reached, or rejected a model or request."""


class PipelineError(DinoError):
    """A pipeline cannot be compiled, submitted or scheduled (e.g. the KFP API is unreachable)."""
