"""`data capture snapshot`: captured images become a new data version under data/captured/<day>/.

The capture store (dino_model.capture) keeps what serving sampled; this turns it into training data
through the same versioning as every other image: files under `data/`, `dvc add`, a push, and a
commit of `data.dvc`, which the retraining check (pipelines/retrain.py) already acts on. On the way
it drops
- exact duplicates: images whose content hash is already a file of the data set (any folder of
  `data/`, hashed here, not only earlier captures), and
- near duplicates: images whose embedding is at least as similar (cosine) as a threshold to an
  image already in the set or to one kept earlier in this snapshot, found with the project's
  similarity index (a faiss inner-product index, dino_model.serving.index) over the copy-detection
  descriptor of a checkpoint (CLS + GeM of the patch tokens, dino_model.eval.copydetection), the
  descriptor built to match edited copies of the same image: re-encodings, crops, small colour
  changes; or over the served model's embeddings, where only Triton is at hand (the CronJob).
  How similar two distinct images look depends on the model (a small model trained for minutes puts
  every digit above 0.999), so by default the threshold is calibrated on the set itself: halfway
  from the 99th percentile of its images' similarity to their nearest other image up to 1. An image
  closer to the set than nearly any two of the set's own images are to each other is a copy.
Images in formats the training scan does not read are dropped as well. The report lists each
drop with its reason (and the neighbour it duplicates), so nothing leaves silently.

The captured files keep their content hash as the name, `data/captured/<day>/<sha256>.<ext>`, and
`records.json` beside them keeps each one's capture time, served model version and drift score.
The fixed evaluation set (`data/<set>/val`) is never written here: captured data cannot enter it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dino_model.capture import CapturedImage, CaptureStore
from dino_model.data.folders import IMAGE_EXTENSIONS
from dino_model.errors import DataError
from dino_model.logs import progress
from dino_model.versioning.repo import DATA_DIR
from dino_model.versioning.sync import snapshot
from dino_model.versioning.versions import DataVersion

logger = logging.getLogger(__name__)

CAPTURED_DIR = "captured"
RECORDS_FILE = "records.json"
CALIBRATION_QUANTILE = 0.99
CALIBRATION_SAMPLE = 2000  # set images whose nearest neighbours calibrate the threshold
Embedder = Callable[[Sequence[Image.Image]], np.ndarray]


@dataclass
class CaptureSnapshot:
    """What a snapshot of the capture store added to the data set, and what it dropped and why."""

    considered: int = 0
    threshold: float | None = None  # the near-duplicate similarity used
    added: list[str] = field(default_factory=list)  # paths under data/
    dropped: list[dict[str, Any]] = field(default_factory=list)  # {sha256, reason, [neighbour, similarity]}
    version: DataVersion | None = None

    def counts(self) -> dict[str, int]:
        reasons: dict[str, int] = {}
        for drop in self.dropped:
            reasons[drop["reason"]] = reasons.get(drop["reason"], 0) + 1
        return reasons

    def to_dict(self) -> dict[str, Any]:
        return {"considered": self.considered, "near_duplicate_threshold": self.threshold,
                "added": len(self.added), "dropped": len(self.dropped),
                "dropped_by_reason": self.counts(), "added_paths": self.added, "dropped_images": self.dropped,
                "version": self.version.to_dict() if self.version else None}


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def data_set_images(data_dir: Path) -> list[Path]:
    """Every image file under data/, sorted (hidden folders left out)."""
    return sorted(p for p in data_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not any(part.startswith(".") for part in p.relative_to(data_dir).parts))


def checkpoint_embedder(checkpoint: str | Path, *, device: str = "cpu", gem_p: float = 4.0) -> Embedder:
    """The copy-detection descriptor of a checkpoint's teacher backbone, at its evaluation size."""
    from dino_model.eval.copydetection_run import embed_images
    from dino_model.eval.settings import checkpoint_config
    from dino_model.models.loading import load_backbone

    cfg = checkpoint_config(checkpoint).eval
    backbone, _ = load_backbone(checkpoint)

    def embed(images: Sequence[Image.Image]) -> np.ndarray:
        features = embed_images(backbone, list(images), cfg, gem_p, device, desc="captured: embeddings")
        return features.numpy().astype(np.float32)

    return embed


def served_embedder(url: str, model_name: str = "dino") -> Embedder:
    """The served model's embeddings (Triton over gRPC), preprocessed as its contract says: what the
    retraining check uses, which reaches Triton but holds no checkpoint."""
    from dino_model.serving.client import EmbeddingClient
    from dino_model.serving.images import transform_for

    client = EmbeddingClient(url, model_name)

    def embed(images: Sequence[Image.Image]) -> np.ndarray:
        transform = transform_for(client.served.contract)
        batch = np.stack([transform(image) for image in images]).astype(np.float32)
        return client.embed(batch)

    return embed


def _rgb(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def _load_rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


class NearDuplicates:
    """A growing inner-product index of the set's descriptors; `match` says what a new image duplicates."""

    def __init__(self, embed: Embedder, names: list[str], images: list[Image.Image],
                 similarity: float | None) -> None:
        from dino_model.serving.index import faiss_module, normalized

        self.embed, self.names = embed, list(names)
        self._normalized = normalized
        self.index: Any = None
        vectors = normalized(embed(images), what="data set descriptors") if images else None
        if vectors is not None:
            self.index = faiss_module().IndexFlatIP(vectors.shape[1])
            self.index.add(vectors)
        self.similarity = similarity if similarity is not None else calibrated_threshold(self.index, vectors)

    def vectors(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self._normalized(self.embed(images), what="captured descriptors")

    def match(self, vector: np.ndarray) -> tuple[str, float] | None:
        """The closest image already in the set when it is at least `similarity` alike, else None."""
        if self.index is None or self.index.ntotal == 0:
            return None
        scores, ids = self.index.search(vector[None], 1)
        best = float(scores[0, 0])
        return (self.names[int(ids[0, 0])], best) if best >= self.similarity else None

    def add(self, name: str, vector: np.ndarray) -> None:
        if self.index is None:
            from dino_model.serving.index import faiss_module

            self.index = faiss_module().IndexFlatIP(vector.shape[0])
        self.index.add(vector[None])
        self.names.append(name)


def calibrated_threshold(index: Any, vectors: np.ndarray | None) -> float:
    """Halfway from the set's CALIBRATION_QUANTILE nearest-other-image similarity up to 1."""
    if vectors is None or len(vectors) < 2:
        return 1.0  # nothing to calibrate on: only identical descriptors count
    sample = vectors[np.random.default_rng(0).permutation(len(vectors))[:CALIBRATION_SAMPLE]]
    scores, _ = index.search(sample, 2)
    nearest_other = float(np.quantile(scores[:, 1], CALIBRATION_QUANTILE))
    threshold = nearest_other + (1.0 - nearest_other) / 2
    logger.info("near-duplicate threshold %.6f (the set's %.0fth percentile nearest-image similarity %.6f)",
                threshold, 100 * CALIBRATION_QUANTILE, nearest_other)
    return threshold


def _candidates(store: CaptureStore, days: Sequence[str] | None, known: set[str], report: CaptureSnapshot
                ) -> list[CapturedImage]:
    """The store's records not already in the set by hash, in a readable format."""
    kept = []
    for record in store.iter_records(days):
        report.considered += 1
        if record.sha256 in known:
            report.dropped.append({"sha256": record.sha256, "reason": "exact duplicate"})
        elif f".{record.extension}" not in IMAGE_EXTENSIONS:
            report.dropped.append({"sha256": record.sha256, "reason": f"format {record.format} not read by training"})
        else:
            kept.append(record)
    return kept


def _write_day(folder: Path, records: list[CapturedImage], payloads: dict[str, bytes]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for record in records:
        path = folder / record.image_name
        path.write_bytes(payloads[record.sha256])
        written.append(path)
    listing = folder / RECORDS_FILE
    previous = json.loads(listing.read_text()) if listing.exists() else []
    listing.write_text(json.dumps(previous + [asdict(r) for r in records], indent=1, sort_keys=True) + "\n")
    written.append(listing)
    return written


def select_captured(root: Path, store: CaptureStore, embed: Embedder, *, days: Sequence[str] | None = None,
                    similarity: float | None = None) -> tuple[CaptureSnapshot, list[CapturedImage],
                                                                     dict[str, bytes]]:
    """Which captured images to add (the report, the kept records, their bytes); writes nothing."""
    data_dir = root / DATA_DIR
    report = CaptureSnapshot()
    existing = data_set_images(data_dir) if data_dir.is_dir() else []
    known = {file_sha256(p) for p in progress(existing, desc="data set: hashes", total=len(existing))}
    candidates = _candidates(store, days, known, report)
    if not candidates:
        return report, [], {}
    names = [str(p.relative_to(root)) for p in existing]
    index = NearDuplicates(embed, names, [_load_rgb(p) for p in existing], similarity)
    report.threshold = round(index.similarity, 6)
    payloads, images, readable = {}, [], []
    for record in progress(candidates, desc="captured: reading", total=len(candidates)):
        data = store.image_bytes(record)
        if hashlib.sha256(data).hexdigest() != record.sha256:
            report.dropped.append({"sha256": record.sha256, "reason": "bytes do not match their hash"})
            continue
        try:
            images.append(_rgb(data))
        except Exception as exc:
            report.dropped.append({"sha256": record.sha256, "reason": f"unreadable: {exc}"})
            continue
        payloads[record.sha256] = data
        readable.append(record)
    kept = []
    for record, vector in zip(readable, index.vectors(images) if images else [], strict=True):
        match = index.match(vector)
        if match is not None:
            report.dropped.append({"sha256": record.sha256, "reason": "near duplicate", "neighbour": match[0],
                                   "similarity": round(match[1], 4)})
            continue
        name = f"{DATA_DIR}/{CAPTURED_DIR}/{record.day}/{record.image_name}"
        index.add(name, vector)
        kept.append(record)
        report.added.append(name)
    return report, kept, payloads


def snapshot_captured(root: str | Path, store: CaptureStore, embed: Embedder, *, days: Sequence[str] | None = None,
                      similarity: float | None = None, message: str | None = None,
                      remote: str | None = None) -> CaptureSnapshot:
    """Add the store's new images to data/captured/<day>/, record and push the version, commit data.dvc."""
    root = Path(root)
    if similarity is not None and not 0.0 < similarity <= 1.0:
        raise DataError(f"near-duplicate similarity must be in (0, 1], got {similarity}")
    report, kept, payloads = select_captured(root, store, embed, days=days, similarity=similarity)
    if not kept:
        logger.info("capture snapshot: nothing new to add (%d considered, %d dropped)", report.considered,
                    len(report.dropped))
        return report
    written: list[Path] = []
    by_day: dict[str, list[CapturedImage]] = {}
    for record in kept:
        by_day.setdefault(record.day, []).append(record)
    listings = {day: _listing_text(root, day) for day in by_day}
    try:
        for day, records in by_day.items():
            written += _write_day(root / DATA_DIR / CAPTURED_DIR / day, records, payloads)
        text = message or (f"data: {len(kept)} captured images ({', '.join(sorted(by_day))}), "
                           f"{len(report.dropped)} dropped")
        report.version = snapshot(root, text, remote=remote)
    except BaseException:
        _undo(root, written, listings)
        raise
    logger.info("capture snapshot: added %d, dropped %d (%s); data version %s", len(kept), len(report.dropped),
                report.counts(), report.version.md5)
    return report


def _listing_text(root: Path, day: str) -> str | None:
    path = root / DATA_DIR / CAPTURED_DIR / day / RECORDS_FILE
    return path.read_text() if path.exists() else None


def _undo(root: Path, written: list[Path], listings: dict[str, str | None]) -> None:
    """Remove what a failed snapshot wrote, so data/ is as it was."""
    for path in written:
        if path.name != RECORDS_FILE:
            path.unlink(missing_ok=True)
    for day, text in listings.items():
        folder = root / DATA_DIR / CAPTURED_DIR / day
        if text is None:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            (folder / RECORDS_FILE).write_text(text)
    captured = root / DATA_DIR / CAPTURED_DIR
    if captured.is_dir() and not any(captured.iterdir()):
        captured.rmdir()
