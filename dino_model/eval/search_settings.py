"""Settings of the two search evaluations (image retrieval, copy detection), readable without torch.

The command line builds its flags and their shown defaults from these dataclasses, so the numbers
live in one place and `dino-mlops eval --help` needs no torch import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

# one query block per edit, as the Copydays blocks (jpegqual, crops, strong) are scored separately
COPY_EDITS = ("crop", "rotate", "jpeg", "colour", "text", "patch", "strong")


@dataclass
class RetrievalConfig:
    recall_ks: List[int] = field(default_factory=lambda: [1, 5, 10])  # recall@k and mP@k cut-offs
    chunk_size: int = 1024  # queries per similarity block; bounds memory to chunk x database


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
