"""Copy detection: strong image edits that make the queries, the CLS + GeM descriptor, PCA whitening.

The descriptor follows the official Copydays evaluation: the last block's CLS token concatenated with
the generalised-mean (GeM, p = 4) pool of its patch tokens, which weighs the strongest local
activations and so survives crops and overlays better than the CLS token alone. Whitening decorrelates
the descriptor's dimensions and equalises their variance (learned on distractor images, never on the
originals being searched for), so that no few dominant directions decide the cosine similarity.

Edits are deterministic: every (seed, original, edit) triple seeds its own generator, so a query set
is rebuilt identically whatever the order or number of originals.
"""

from __future__ import annotations

import io
import math
import string
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageFont
from torch import Tensor, nn

from dino_model.errors import ConfigError, DataError
from dino_model.eval.retrieval import QueryScores, rank_and_score
from dino_model.eval.search_settings import COPY_EDITS, MAX_WHITEN_POWER, CopyDetectionConfig, check_int, check_number
from dino_model.models.backbone import intermediate_tokens

EIGEN_FLOOR = 1e-5  # eigenvalues below this fraction of the largest are raised to it (as the official PCA)


def gem(tokens: Tensor, p: float = 4.0, eps: float = 1e-6) -> Tensor:
    """Generalised mean over tokens: (B, N, D) -> (B, D), (mean_n max(x, eps)^p)^(1/p).

    Computed as m (mean_n (x / m)^p)^(1/p) with m the largest token value, so that no finite p > 0
    overflows (x^p in float32 passes 3.4e38 at x = 50 once p > 22).
    """
    if not (math.isfinite(p) and p > 0):
        raise ConfigError(f"gem_p (--gem-p)={p!r} must be a finite number > 0")
    x = tokens.clamp(min=eps)
    scale = x.amax(dim=1, keepdim=True)
    return scale.squeeze(1) * (x / scale).pow(p).mean(dim=1).pow(1.0 / p)


def cls_gem_embedding(backbone: nn.Module, images: Tensor, p: float = 4.0) -> Tensor:
    """(B, 2D): the last block's normed CLS token, then the GeM pool of its patch tokens."""
    tokens = intermediate_tokens(backbone, images, 1)[0]
    n_prefix = int(getattr(backbone, "num_prefix_tokens", 1))
    return torch.cat([tokens[:, 0], gem(tokens[:, n_prefix:], p)], dim=1)


@dataclass
class Whitening:
    """x -> (x - mean) @ projection.T, projection = diag(eigenvalues^-power) @ eigenvectors.T (largest first)."""

    mean: Tensor  # (D,)
    projection: Tensor  # (k, D)
    kept_energy: float  # share of the variance the kept components hold

    def apply(self, x: Tensor) -> Tensor:
        return ((x.double() - self.mean) @ self.projection.T).float()


def fit_whitening(features: Tensor, *, power: float = 0.5, dim: int | None = None) -> Whitening:
    """PCA whitening of `features` (N, D) from their centred covariance.

    dim None keeps min(D, N - 1) components, the rank of the centred covariance: directions the
    learning set does not span would otherwise be scaled up from noise.
    """
    check_number("whiten_power", power, 0.0, MAX_WHITEN_POWER)
    if dim is not None:
        check_int("whiten_dim (--whiten-dim)", dim, 1)
    n, d_in = features.shape
    if n < 2:
        raise DataError(f"whitening needs at least 2 images, got {n}")
    x = features.double()
    mean = x.mean(dim=0)
    centred = x - mean
    eigvals, eigvecs = torch.linalg.eigh(centred.T @ centred / n)
    eigvals = eigvals.clamp(min=float(eigvals.max()) * EIGEN_FLOOR)
    order = torch.argsort(eigvals, descending=True)[: dim or min(d_in, n - 1)]
    kept = float(eigvals[order].sum() / eigvals.sum())
    projection = torch.diag(eigvals[order].pow(-power)) @ eigvecs[:, order].T
    return Whitening(mean=mean, projection=projection, kept_energy=kept)


# ---- edits: each takes (image, generator, donor image) and returns a new RGB image ----


def edit_crop(img: Image.Image, rng: np.random.Generator, donor: Image.Image) -> Image.Image:
    """A random crop keeping 30-70% of each side."""
    w, h = img.size
    cw, ch = (max(1, round(s * rng.uniform(0.3, 0.7))) for s in (w, h))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return img.crop((x, y, x + cw, y + ch))


def edit_rotate(img: Image.Image, rng: np.random.Generator, donor: Image.Image) -> Image.Image:
    """A rotation by 10-45 degrees either way; the canvas grows and the corners are black."""
    angle = float(rng.uniform(10, 45) * rng.choice([-1, 1]))
    return img.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)


def edit_jpeg(img: Image.Image, rng: np.random.Generator, donor: Image.Image) -> Image.Image:
    """JPEG re-encoding at quality 3-15 (the low end of the Copydays JPEG block)."""
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=int(rng.integers(3, 16)))
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def edit_colour(img: Image.Image, rng: np.random.Generator, donor: Image.Image) -> Image.Image:
    """Brightness, contrast and saturation each scaled by 0.5-1.5, then the hue rotated."""
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enhancer(img).enhance(float(rng.uniform(0.5, 1.5)))
    hsv = np.array(img.convert("HSV"))
    hsv[..., 0] = (hsv[..., 0].astype(np.int32) + int(rng.integers(20, 236))) % 256
    return Image.fromarray(hsv, mode="HSV").convert("RGB")


def edit_text(img: Image.Image, rng: np.random.Generator, donor: Image.Image) -> Image.Image:
    """Two lines of random text, a tenth to a fifth of the image high, in a random colour."""
    out = img.copy()
    w, h = out.size
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default(size=max(4, int(h * rng.uniform(0.1, 0.2))))
    for _ in range(2):
        text = "".join(rng.choice(list(string.ascii_letters + string.digits), size=int(rng.integers(4, 10))))
        xy = (int(rng.integers(0, max(1, w // 2))), int(rng.integers(0, max(1, h - h // 5))))
        draw.text(xy, text, fill=tuple(int(c) for c in rng.integers(0, 256, 3)), font=font)
    return out


def edit_patch(img: Image.Image, rng: np.random.Generator, donor: Image.Image) -> Image.Image:
    """A piece of another image pasted over 10-25% of the area."""
    out = img.copy()
    w, h = out.size
    side = float(np.sqrt(rng.uniform(0.1, 0.25)))
    pw, ph = max(1, round(w * side)), max(1, round(h * side))
    piece = donor.resize((pw, ph), Image.Resampling.BICUBIC)
    out.paste(piece, (int(rng.integers(0, w - pw + 1)), int(rng.integers(0, h - ph + 1))))
    return out


def edit_strong(img: Image.Image, rng: np.random.Generator, donor: Image.Image) -> Image.Image:
    """Crop, rotation, colour change, text or patch overlay, then JPEG, as the Copydays 'strong' block mixes."""
    img = edit_crop(img, rng, donor)
    img = edit_rotate(img, rng, donor)
    img = edit_colour(img, rng, donor)
    img = (edit_text if rng.random() < 0.5 else edit_patch)(img, rng, donor)
    return edit_jpeg(img, rng, donor)


EDIT_FUNCTIONS = {"crop": edit_crop, "rotate": edit_rotate, "jpeg": edit_jpeg, "colour": edit_colour,
                  "text": edit_text, "patch": edit_patch, "strong": edit_strong}


@dataclass
class Query:
    image: Image.Image
    source: int  # index of the original it was made from
    edit: str


def check_edits(edits: Sequence[str]) -> None:
    unknown = sorted(set(edits) - set(COPY_EDITS))
    if unknown or not edits:
        raise ConfigError(f"copy-detection edits must be a non-empty subset of {', '.join(COPY_EDITS)}; "
                          f"got {', '.join(unknown) or 'none'}")


def make_queries(originals: Sequence[Image.Image], donors: Sequence[Image.Image], edits: Sequence[str],
                 seed: int) -> list[Query]:
    """One query per (original, edit); the donor of a patch is drawn from `donors` by the same generator."""
    check_edits(edits)
    if not donors:
        raise DataError("copy detection needs at least one distractor image to paste patches from")
    queries = []
    for i, original in enumerate(originals):
        for name in edits:
            rng = np.random.default_rng([seed, i, COPY_EDITS.index(name)])
            donor = donors[int(rng.integers(len(donors)))].convert("RGB")
            queries.append(Query(EDIT_FUNCTIONS[name](original.convert("RGB"), rng, donor).convert("RGB"), i, name))
    return queries


@dataclass
class CopyScores:
    """Per-query results of one copy-detection search, and the metrics they make."""

    scores: QueryScores
    edits: list[str]
    whitening: Whitening | None

    def metrics(self, suffix: str = "") -> dict[str, float]:
        """mAP and recall@1 in percent, over all queries and per edit; `suffix` ends every name."""
        ap, hit = self.scores.ap, self.scores.first == 0
        out = {f"copydetection_map{suffix}": 100.0 * float(ap.mean()),
               f"copydetection_recall_at_1{suffix}": 100.0 * float(hit.mean())}
        names = np.asarray(self.edits)
        for edit in dict.fromkeys(self.edits):
            mask = names == edit
            out[f"copydetection_map_{edit}{suffix}"] = 100.0 * float(ap[mask].mean())
            out[f"copydetection_recall_at_1_{edit}{suffix}"] = 100.0 * float(hit[mask].mean())
        return out


def score_copies(query_x: Tensor, sources: Sequence[int], edits: Sequence[str], originals_x: Tensor,
                 distractors_x: Tensor, settings: CopyDetectionConfig, *, whiten: bool | None = None) -> CopyScores:
    """Rank originals + distractors for every query by cosine similarity (after whitening learned on the
    distractors when `whiten`, default settings.whitening); a query's one positive is its original."""
    whiten = settings.whitening if whiten is None else whiten
    database = torch.cat([originals_x, distractors_x])
    whitening = None
    if whiten:
        whitening = fit_whitening(distractors_x, power=settings.whiten_power, dim=settings.whiten_dim)
        query_x, database = whitening.apply(query_x), whitening.apply(database)
    db_y = torch.cat([torch.arange(len(originals_x)), torch.full((len(distractors_x),), -1)])
    scores = rank_and_score(query_x, torch.as_tensor(list(sources), dtype=torch.long), database, db_y, ks=(1,),
                            chunk_size=settings.chunk_size)
    return CopyScores(scores=scores, edits=list(edits), whitening=whitening)
