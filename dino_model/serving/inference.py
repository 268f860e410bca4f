"""`dino-mlops infer`: images in, embeddings out (.npy, .npz or JSON), with optional k-NN labels and neighbours.

Batches are loaded, preprocessed and sent concurrently. An `.npz` written from labelled class
folders is itself a k-NN index (embeddings, labels, classes): passing it back with `--knn-index`
labels new images by the weighted vote of DINO's k-NN evaluation (Caron et al., ICCV 2021,
Sec. 4.1): the same vote as `dino_model.eval.knn.weighted_vote`, written in numpy and computed here
on the served embeddings, because this path runs in the client-only install, which has no PyTorch
(a test holds the two votes equal). With `--search`, each image's nearest images in a similarity
index (dino_model/serving/index.py) go into the output beside its embedding. With
`server_preprocess` the files' bytes go to the server's image entry point (`<model>_images`) as they
are, and the server preprocesses them with the same code (`--server-preprocess`).
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dino_model.errors import ConfigError, DataError, ServingError
from dino_model.export.contract import EMBEDDING
from dino_model.logs import progress
from dino_model.serving.client import EmbeddingClient
from dino_model.serving.images import ImageItem, collect_images, load_batch, read_encoded, transform_for

logger = logging.getLogger(__name__)

OUTPUT_SUFFIXES = (".npy", ".npz", ".json")


@dataclass
class EmbeddingResult:
    paths: list[str]
    labels: list[str]  # class folder names; "" when unlabelled
    embeddings: np.ndarray  # (N, D) float32, L2-normalised by the model
    skipped: list[dict[str, str]] = field(default_factory=list)
    predictions: list[str] = field(default_factory=list)  # k-NN labels when an index was given
    # per image, its nearest indexed images ({"path", "label" when known, "similarity"}) when searched
    neighbours: list[list[dict[str, Any]]] = field(default_factory=list)


def embed_images(inputs: list[str | Path], client: EmbeddingClient, *, batch_size: int = 32,
                 concurrency: int = 4, server_preprocess: bool = False) -> EmbeddingResult:
    """Embed every readable image under `inputs`; unreadable files are skipped and listed.

    `server_preprocess`: send the encoded files to the server's image entry point instead of
    preprocessing here (an item the server refuses is skipped with its reason).
    """
    items, skipped = collect_images(inputs)
    transform = transform_for(client.served.contract)
    size = max(1, min(batch_size, client.served.max_batch_size))
    batches = [items[i : i + size] for i in range(0, len(items), size)]
    if server_preprocess:
        client.images_entry_point  # noqa: B018 - fail once, before any batch, when the server has none

    def work(batch: list[ImageItem]) -> tuple[list[ImageItem], np.ndarray, list[dict[str, str]]]:
        if server_preprocess:
            return _embed_encoded(client, batch)
        images, kept, bad = load_batch(batch, transform)
        return kept, client.infer(images)[EMBEDDING] if kept else None, bad

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        results = list(progress(pool.map(work, batches), desc="infer", total=len(batches)))
    kept = [item for r in results for item in r[0]]
    skipped += [bad for r in results for bad in r[2]]
    if not kept:
        raise DataError(f"none of the {len(items)} input file(s) is a readable image: {skipped[:5]}")
    embeddings = np.concatenate([r[1] for r in results if r[1] is not None])
    logger.info("embedded %d image(s) with %s (%d skipped)", len(kept), client.model_name, len(skipped))
    return EmbeddingResult([str(i.path) for i in kept], [i.label for i in kept], embeddings, skipped)


def _embed_encoded(client: EmbeddingClient, batch: list[ImageItem]
                   ) -> tuple[list[ImageItem], np.ndarray | None, list[dict[str, str]]]:
    """One batch through the image entry point; when the server refuses it, each item alone, so one bad
    file is skipped with the server's reason and the rest are still embedded."""
    encoded, kept, bad = read_encoded(batch)
    if not kept:
        return kept, None, bad
    try:
        return kept, client.infer_encoded(encoded)[EMBEDDING], bad
    except ServingError as exc:
        if len(kept) == 1 or "cannot be used" not in str(exc):
            raise
    answered, embeddings = [], []
    for item, data in zip(kept, encoded, strict=True):
        try:
            embeddings.append(client.infer_encoded([data])[EMBEDDING])
            answered.append(item)
        except ServingError as exc:
            if "cannot be used" not in str(exc):
                raise
            logger.warning("skipped %s: the server refused it: %s", item.path, exc)
            bad.append({"path": str(item.path), "reason": f"refused by the server: {exc}"})
    return answered, np.concatenate(embeddings) if embeddings else None, bad


def predict_labels(result: EmbeddingResult, index_path: str | Path, *, k: int = 20, temperature: float = 0.07
                ) -> list[str]:
    """Labels by weighted k-NN vote over a stored index of labelled embeddings."""
    if k < 1 or temperature <= 0:
        raise ConfigError(f"k-NN labels need k >= 1 and temperature > 0, got k={k}, temperature={temperature}")
    index = load_labelled_embeddings(index_path)
    if index["embeddings"].shape[1] != result.embeddings.shape[1]:
        raise DataError(f"index {index_path} holds {index['embeddings'].shape[1]}-d embeddings; the model "
                        f"returns {result.embeddings.shape[1]}-d ones: build the index with the same model")
    similarity = result.embeddings.astype(np.float32) @ index["embeddings"].astype(np.float32).T
    k = min(k, similarity.shape[1])
    nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    sims = np.take_along_axis(similarity, nearest, axis=1)
    votes = weighted_vote_numpy(sims, index["labels"].astype(np.int64)[nearest], len(index["classes"]), temperature)
    return [str(index["classes"][i]) for i in votes.argmax(axis=1).tolist()]


def weighted_vote_numpy(sims: np.ndarray, labels: np.ndarray, n_classes: int, temperature: float) -> np.ndarray:
    """Per query row, the summed weights exp(sim / T) of its neighbours of each class: (n, C)."""
    weights = np.exp(sims / temperature)
    scores = np.zeros((sims.shape[0], n_classes), dtype=weights.dtype)
    np.add.at(scores, (np.arange(sims.shape[0])[:, None], labels), weights)
    return scores


def load_labelled_embeddings(path: str | Path) -> dict[str, np.ndarray]:
    """A k-NN index: an .npz written by `dino-mlops infer <labelled folder> --output index.npz`."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            index = {key: data[key] for key in ("embeddings", "labels", "classes")}
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"{path} is not a k-NN index (.npz with embeddings, labels, classes): {exc}") from exc
    keep = index["labels"] >= 0
    if not keep.any():
        raise DataError(f"{path} holds no labelled embedding; build it from class folders")
    return {"embeddings": index["embeddings"][keep], "labels": index["labels"][keep], "classes": index["classes"]}


def write_embeddings(result: EmbeddingResult, output: str | Path, *, model: str = "") -> Path:
    """Write .npy (embeddings only), .npz (also paths, labels, classes: usable as a k-NN index) or .json."""
    output = Path(output)
    if output.suffix not in OUTPUT_SUFFIXES:
        raise DataError(f"output {output} must end in one of {', '.join(OUTPUT_SUFFIXES)}")
    if result.neighbours and output.suffix == ".npy":
        raise DataError(f"output {output} holds embeddings only; write search results to .npz or .json")
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix == ".npy":
        np.save(output, result.embeddings)
    elif output.suffix == ".npz":
        classes = sorted({label for label in result.labels if label})
        labels = np.array([classes.index(label) if label else -1 for label in result.labels], dtype=np.int64)
        np.savez(output, embeddings=result.embeddings, paths=np.array(result.paths), labels=labels,
                 classes=np.array(classes, dtype=str), predictions=np.array(result.predictions, dtype=str),
                 **_neighbour_arrays(result.neighbours))
    else:
        output.write_text(json.dumps(_as_json(result, model), indent=1, allow_nan=False) + "\n")
    return output


def _neighbour_arrays(neighbours: list[list[dict[str, Any]]]) -> dict[str, np.ndarray]:
    """(N, k) neighbour_paths, neighbour_labels and neighbour_similarities; "" and NaN pad short rows."""
    if not neighbours:
        return {}
    k = max(len(row) for row in neighbours)
    paths = np.full((len(neighbours), k), "", dtype=object)
    labels = np.full((len(neighbours), k), "", dtype=object)
    similarities = np.full((len(neighbours), k), np.nan, dtype=np.float32)
    for i, row in enumerate(neighbours):
        for j, found in enumerate(row):
            paths[i, j], labels[i, j], similarities[i, j] = found["path"], found.get("label", ""), found["similarity"]
    return {"neighbour_paths": paths.astype(str), "neighbour_labels": labels.astype(str),
            "neighbour_similarities": similarities}


def _as_json(result: EmbeddingResult, model: str) -> dict[str, Any]:
    predictions = result.predictions or [""] * len(result.paths)
    items = [{"path": p, "label": label, "prediction": pred, "embedding": [round(float(v), 7) for v in emb]}
             for p, label, pred, emb in zip(result.paths, result.labels, predictions, result.embeddings, strict=True)]
    for item, found in zip(items, result.neighbours, strict=False):
        item["neighbours"] = found
    return {"model": model, "embedding_dim": int(result.embeddings.shape[1]), "items": items,
            "skipped": result.skipped}
