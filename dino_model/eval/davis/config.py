"""Settings of the DAVIS video-segmentation evaluation; plain dataclasses, no torch.

Defaults are those of DINO's `eval_video_segmentation.py` and of `davis2017-evaluation`. Frame
size is a setting (the official script fixes a 480-px short side and a 64-px multiple) so that a
32-px test model can run on small frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from dino_model.errors import ConfigError

FEATURE_SOURCES = ("vit", "colour")
MASK_FORMATS = ("auto", "2017", "2016")


@dataclass
class PropagationParams:
    """Label-propagation settings (`eval_video_segmentation.py` defaults)."""

    n_last_frames: int = 7  # queue of previous frames used besides the first one
    neighbourhood: int = 12  # radius in patches of the square source window; 0 disables it
    topk: int = 5  # sources kept per target, over all context frames jointly
    temperature: float = 0.1  # hard-coded in the official script
    chunk_size: int = 2048  # target patches per affinity block (memory); one block at 480p, patch 16, as official


@dataclass
class DavisConfig:
    sequences: List[str] = field(default_factory=list)  # empty: ImageSets/<year>/<split>.txt
    split: str = "val"
    year: str = "2017"
    resolution: str = "480p"  # folder under JPEGImages/ and Annotations/
    annotations: str = "Annotations"  # e.g. Annotations_indexed for a converted DAVIS 2016 copy
    mask_format: str = "auto"  # auto | 2017 (palette ids) | 2016 (grayscale 0/255 -> id 1)
    short_side: Optional[int] = 480  # frames resized to this short side; None keeps their own
    size_multiple: int = 64  # the long side is floored to a multiple of this
    max_frames: Optional[int] = None  # propagate and score only the first N frames of each video
    frames_per_batch: int = 8  # frames per backbone forward pass
    features: str = "vit"  # vit (the checkpoint's patch tokens) | colour (oracle, no model)
    oracle_patch_size: int = 8  # patch size of the colour oracle
    bound_th: float = 0.008  # F tolerance: fraction of the image diagonal (< 1) or pixels (>= 1)
    propagation: PropagationParams = field(default_factory=PropagationParams)

    def validate(self) -> None:
        """Raise ConfigError naming the first setting out of range."""
        p = self.propagation
        checks = {
            "features": (self.features in FEATURE_SOURCES, f"one of {', '.join(FEATURE_SOURCES)}"),
            "mask_format": (self.mask_format in MASK_FORMATS, f"one of {', '.join(MASK_FORMATS)}"),
            "propagation.topk": (p.topk >= 1, "at least 1"),
            "propagation.temperature": (p.temperature > 0, "positive"),
            "propagation.n_last_frames": (p.n_last_frames >= 0, "0 (first frame only) or more"),
            "propagation.neighbourhood": (p.neighbourhood >= 0, "0 (no restriction) or more"),
            "propagation.chunk_size": (p.chunk_size >= 1, "at least 1"),
            "frames_per_batch": (self.frames_per_batch >= 1, "at least 1"),
            "max_frames": (self.max_frames is None or self.max_frames >= 2, "None or at least 2"),
        }
        for key, (ok, expected) in checks.items():
            if not ok:
                value = getattr(p, key.split(".")[1]) if key.startswith("propagation.") else getattr(self, key)
                raise ConfigError(f"DAVIS setting {key}={value!r} must be {expected}")
