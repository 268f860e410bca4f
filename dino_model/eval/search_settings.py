"""Settings of the two search evaluations (image retrieval, copy detection), readable without torch.

The command line builds its flags and their shown defaults from these dataclasses, so the numbers
live in one place and `dino-mlops eval --help` needs no torch import. Each checks its ranges when
built, before any checkpoint is read: out of range, a search evaluation either crashes deep inside
(`--gem-p 0` divides by zero) or, worse, writes metrics that look like numbers but are not
(`--recall-k 0` is 0/0, NaN). The error is one line naming the option and the allowed range.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, List, Optional

from dino_model.errors import ConfigError

# one query block per edit, as the Copydays blocks (jpegqual, crops, strong) are scored separately
COPY_EDITS = ("crop", "rotate", "jpeg", "colour", "text", "patch", "strong")


MAX_WHITEN_POWER = 1.0  # eigenvalue^-power: 0 rotates only, 0.5 whitens, 1 divides by the variance


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(option: str, value: Any, minimum: int) -> None:
    """ConfigError `option=value must be an integer >= minimum` unless it is one."""
    if not _is_int(value) or value < minimum:
        raise ConfigError(f"{option}={value!r} must be an integer >= {minimum}")


def check_number(option: str, value: Any, low: float, high: float = math.inf, *, low_open: bool = False) -> None:
    """ConfigError naming `option` and the range unless `value` is a finite number in it."""
    number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    if math.isfinite(number) and (number > low if low_open else number >= low) and number <= high:
        return
    if math.isfinite(high):
        allowed = f"in {'(' if low_open else '['}{low:g}, {high:g}]"
    else:
        allowed = f"{'>' if low_open else '>='} {low:g}"
    raise ConfigError(f"{option}={value!r} must be a finite number {allowed}")


def check_ints(option: str, values: Sequence[Any], minimum: int) -> None:
    """ConfigError unless `values` is a non-empty list of integers >= minimum."""
    if isinstance(values, (str, bytes)) or not values or not all(_is_int(v) and v >= minimum for v in values):
        raise ConfigError(f"{option}={list(values) if isinstance(values, Sequence) else values!r} must hold "
                          f"one or more integers >= {minimum}")


@dataclass
class RetrievalConfig:
    recall_ks: List[int] = field(default_factory=lambda: [1, 5, 10])  # recall@k and mP@k cut-offs
    chunk_size: int = 1024  # queries per similarity block; bounds memory to chunk x database

    def __post_init__(self) -> None:
        check_ints("recall_ks (--recall-k)", self.recall_ks, 1)  # recall@0 is 0/0
        check_int("chunk_size", self.chunk_size, 1)


@dataclass
class CopyDetectionConfig:
    originals: int = 50  # held-out images the queries are made from; every other image is a distractor
    edits: List[str] = field(default_factory=lambda: list(COPY_EDITS))
    seed: int = 0  # picks the originals and every edit's parameters
    gem_p: float = 4.0  # GeM exponent of the pooled patch tokens
    whitening: bool = True  # PCA whitening learned on the distractors
    whiten_power: float = 0.5  # eigenvalue exponent: 0.5 = full whitening
    whiten_dim: Optional[int] = None  # kept components; None: min(feature dim, distractors - 1)
    chunk_size: int = 1024

    def __post_init__(self) -> None:
        check_int("originals (--originals)", self.originals, 1)
        if isinstance(self.edits, (str, bytes)) or not self.edits or any(e not in COPY_EDITS for e in self.edits):
            raise ConfigError(f"edits (--edits)={self.edits!r} must hold one or more of {', '.join(COPY_EDITS)}")
        check_int("seed (--seed)", self.seed, 0)  # numpy's generators take non-negative seeds
        check_number("gem_p (--gem-p)", self.gem_p, 0.0, low_open=True)  # the pool takes the 1/p-th root
        check_number("whiten_power", self.whiten_power, 0.0, MAX_WHITEN_POWER)
        if self.whiten_dim is not None:
            check_int("whiten_dim (--whiten-dim)", self.whiten_dim, 1)
        check_int("chunk_size", self.chunk_size, 1)
