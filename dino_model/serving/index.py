"""Similarity search over served embeddings: an index folder built from one served model, queried by `infer`.

An index is only meaningful for the model whose embeddings it holds: a neighbour list computed with
query embeddings from another model (another version, other weights) is silently wrong, not an
error. So the folder's manifest records the served model it was built from (name, version, the sha256
of the ONNX file Triton serves and the export record that vouched for its lineage) and the data
version of the images, and a search refuses a server that serves anything else unless told to.

Embeddings are L2-normalised, so inner product is cosine similarity: `exact` is a flat inner-product
index (every vector compared), `ivf` an inverted file of `nlist` k-means cells of which `nprobe` are
searched per query (faster on large sets, at some recall; with nprobe = nlist it is exact). faiss is
imported inside the functions that need it: the client-only install (no faiss) imports this module,
and only a search tells it to install faiss-cpu.

The manifest is also bound to its index file: it records the sha256 of `index.faiss`, and a search
checks that digest, then every field it relies on (paths and labels one per vector, kind, metric,
nprobe a positive integer), before the index is used. A changed or corrupted index.faiss (zeroed
vectors answer with silently wrong neighbours) or an inconsistent manifest is one DataError naming
the file, not a traceback or a wrong answer. Manifests of format 1 carry no digest: they are refused
with a request to rebuild, because nothing can tell their index file from a changed one.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from dino_model.errors import ConfigError, DataError, ServingError
from dino_model.export.lineage import VERIFIED_KEY
from dino_model.runtime import atomic
from dino_model.runtime.digests import file_sha256
from dino_model.serving.client import EmbeddingClient
from dino_model.serving.gate import config_lineage
from dino_model.triton.config import config_parameters

logger = logging.getLogger(__name__)

KINDS = ("exact", "ivf")
METRIC = "inner_product"  # of L2-normalised vectors: cosine similarity
INDEX_FILE = "index.faiss"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 2  # 2: the manifest records index.faiss's sha256 (format 1 did not)
DEFAULT_NPROBE = 16
POINTS_PER_CELL = 39  # fewest training points per k-means cell faiss accepts without a warning


def _is_int(value: Any, minimum: int) -> bool:
    """An int (not a bool, not a float such as 2.0 or 2.5) of at least `minimum`."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


@dataclass(frozen=True)
class ServedIdentity:
    """Which served model produced a set of embeddings."""

    name: str
    version: str
    onnx_sha256: str  # of the file Triton serves: the weights themselves
    lineage_verified: str = ""  # the export record that vouched for the lineage; "" when unverified
    lineage: dict[str, str] = field(default_factory=dict)  # verified lineage (training data, code, metrics)

    def describe(self) -> str:
        digest = f"sha256 {self.onnx_sha256[:12]}" if self.onnx_sha256 else "sha256 unknown"
        return f"{self.name!r} version {self.version or '?'} ({digest})"

    def differs_from(self, other: ServedIdentity) -> list[str]:
        """The fields (name, version, onnx_sha256) on which two identities disagree."""
        return [key for key in ("name", "version", "onnx_sha256") if getattr(self, key) != getattr(other, key)]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServedIdentity:
        return cls(name=str(data.get("name", "")), version=str(data.get("version", "")),
                   onnx_sha256=str(data.get("onnx_sha256", "")), lineage_verified=str(data.get("lineage_verified", "")),
                   lineage={str(k): str(v) for k, v in (data.get("lineage") or {}).items()})


@dataclass(frozen=True)
class IndexOptions:
    kind: str = "exact"
    nlist: int | None = None  # ivf cells; None: about 4 sqrt(N), at most N / 39
    nprobe: int = DEFAULT_NPROBE  # ivf cells searched per query

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"index kind {self.kind!r} is unknown; choose one of {', '.join(KINDS)}")
        if self.nlist is not None and not _is_int(self.nlist, 1):
            raise ConfigError(f"nlist must be >= 1, got {self.nlist!r} (--nlist takes an integer >= 1)")
        if not _is_int(self.nprobe, 1):
            raise ConfigError(f"nprobe must be >= 1, got {self.nprobe!r} (--nprobe takes an integer >= 1)")


@dataclass
class SimilarityIndex:
    """A faiss index and its manifest (what each row is, which model and data it came from)."""

    index: Any  # faiss.Index
    manifest: dict[str, Any]

    @property
    def paths(self) -> list[str]:
        return self.manifest["paths"]

    @property
    def labels(self) -> list[str]:
        return self.manifest.get("labels") or [""] * len(self.paths)

    @property
    def model(self) -> ServedIdentity:
        return ServedIdentity.from_dict(self.manifest.get("model", {}))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, row ids), both (n, k), best first; id -1 (similarity -inf) where fewer were found."""
        if k < 1:
            raise ConfigError(f"similarity search needs k >= 1, got {k}")
        queries = normalized(queries, what="query embeddings")
        if queries.shape[1] != self.index.d:
            raise DataError(f"the index holds {self.index.d}-d embeddings; the queries are {queries.shape[1]}-d: "
                            "build the index with the model that embeds the queries")
        similarities, ids = self.index.search(queries, k)
        return similarities, ids.astype(np.int64, copy=False)


def faiss_module():
    """faiss, or a ConfigError saying how to install it (the client-only install has none)."""
    try:
        import faiss
    except ImportError as exc:
        raise ConfigError(f"similarity search needs faiss ({exc}): pip install faiss-cpu") from None
    return faiss


def normalized(embeddings: np.ndarray, *, what: str = "embeddings") -> np.ndarray:
    """Float32 C-contiguous rows of unit length (zero rows stay zero); DataError unless finite (N, D)."""
    array = np.asarray(embeddings, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise DataError(f"{what} must be a non-empty (N, D) array, got shape {list(array.shape)}")
    if not np.isfinite(array).all():
        raise DataError(f"{what} hold NaN or infinite values")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return np.ascontiguousarray(array / np.where(norms > 0, norms, 1), dtype=np.float32)


def default_nlist(count: int) -> int:
    """About 4 sqrt(N) cells, with at least 39 training points per cell."""
    return max(1, min(round(4 * math.sqrt(count)), count // POINTS_PER_CELL))


def build_faiss_index(embeddings: np.ndarray, options: IndexOptions = IndexOptions()) -> Any:
    """A faiss index over the L2-normalised embeddings: IndexFlatIP, or IndexIVFFlat trained on them."""
    faiss = faiss_module()
    vectors = normalized(embeddings)
    count, dim = vectors.shape
    if options.kind == "exact":
        index = faiss.IndexFlatIP(dim)
    else:
        nlist = options.nlist or default_nlist(count)
        if nlist > count:
            raise ConfigError(f"an ivf index of nlist={nlist} cells needs at least {nlist} embeddings, got {count}; "
                              "lower --nlist or use --kind exact")
        if count < POINTS_PER_CELL * nlist:
            logger.warning("%d embeddings train %d cells (fewer than %d per cell): the cells are rough",
                           count, nlist, POINTS_PER_CELL)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = min(options.nprobe, nlist)
    index.add(vectors)
    return index


def build_index(embeddings: np.ndarray, paths: Sequence[str], labels: Sequence[str], *, model: ServedIdentity,
                options: IndexOptions = IndexOptions(), data_version: str = "", image_root: str = ""
                ) -> SimilarityIndex:
    """An index of `embeddings` (row i is the image `paths[i]`, of class `labels[i]` or "") and its manifest."""
    if len(paths) != len(embeddings) or len(labels) != len(embeddings):
        raise DataError(f"{len(embeddings)} embeddings but {len(paths)} paths and {len(labels)} labels")
    index = build_faiss_index(embeddings, options)
    manifest: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "kind": options.kind,
        "metric": METRIC,
        "dimension": int(index.d),
        "count": int(index.ntotal),
        "model": asdict(model),
        "data_version": data_version,
        "image_root": image_root,
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "faiss_version": faiss_module().__version__,
        "paths": list(paths),
    }
    if options.kind == "ivf":
        manifest |= {"nlist": int(index.nlist), "nprobe": int(index.nprobe)}
    if any(labels):
        manifest["labels"] = list(labels)
    return SimilarityIndex(index, manifest)


def write_index(index: SimilarityIndex, folder: str | Path) -> Path:
    """Write `index.faiss` and then `manifest.json` (recording the index file's sha256) into `folder`.

    Each is replaced atomically; between the two replacements the old manifest's digest does not match
    the new index file, so a reader then refuses the folder rather than mixing the two.
    """
    faiss = faiss_module()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic.replacing(folder / INDEX_FILE) as temporary:
        faiss.write_index(index.index, str(temporary))
        index.manifest["index_sha256"] = file_sha256(temporary)
    atomic.write_json(folder / MANIFEST_FILE, index.manifest, indent=1, mode=0o644)
    logger.info("wrote a %s index of %d embeddings to %s", index.manifest["kind"], index.manifest["count"], folder)
    return folder


def load_index(folder: str | Path) -> SimilarityIndex:
    """The index in `folder` (written by write_index), checked against its manifest before any use.

    Raises:
        DataError: in one line naming the file: a file is missing or unreadable, the manifest is of an
            older format or malformed (see check_manifest), index.faiss is not the file the manifest
            recorded (sha256), or it holds other vectors than the manifest lists.
    """
    faiss = faiss_module()
    folder = Path(folder)
    manifest_path, index_path = folder / MANIFEST_FILE, folder / INDEX_FILE
    if not manifest_path.is_file() or not index_path.is_file():
        raise DataError(f"{folder} is not a similarity index: it needs {MANIFEST_FILE} and {INDEX_FILE} "
                        "(written by `dino-mlops index build`)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the index manifest {manifest_path}: {exc}") from exc
    check_manifest(manifest, manifest_path)
    digest = file_sha256(index_path)
    if digest != manifest["index_sha256"]:
        raise DataError(f"{index_path} has sha256 {digest[:12]}... but {manifest_path} records "
                        f"{manifest['index_sha256'][:12]}...: the index file changed after it was built; "
                        "rebuild it with `dino-mlops index build`")
    try:
        index = faiss.read_index(str(index_path))
    except (OSError, ValueError, RuntimeError) as exc:
        raise DataError(f"cannot read the similarity index {index_path}: {_first_line(exc)}") from exc
    _check_against_index(index, manifest, index_path, manifest_path)
    if manifest["kind"] == "ivf":
        faiss.extract_index_ivf(index).nprobe = manifest["nprobe"]
    return SimilarityIndex(index, manifest)


def _first_line(exc: BaseException) -> str:
    """faiss's C++ exceptions span lines; a DataError is one."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _is_strings(value: Any, count: int) -> bool:
    return isinstance(value, list) and len(value) == count and all(isinstance(v, str) for v in value)


def check_manifest(manifest: Any, where: str | Path) -> None:
    """DataError, one line naming `where`, unless `manifest` has every field a search relies on, well-formed."""
    def bad(problem: str) -> DataError:
        return DataError(f"{where} is not a usable index manifest: {problem}; rebuild it with `dino-mlops index build`")

    if not isinstance(manifest, dict):
        raise bad(f"it holds a JSON {type(manifest).__name__}, not an object")
    if manifest.get("format") == 1:
        raise bad("it is of format 1, written before manifests recorded the sha256 of index.faiss, so the "
                  "index file cannot be checked")
    if manifest.get("format") != FORMAT_VERSION:
        raise bad(f"format {manifest.get('format')!r} is not {FORMAT_VERSION}")
    digest = manifest.get("index_sha256")
    if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
        raise bad(f"index_sha256={digest!r} is not a sha256 hex digest")
    if manifest.get("kind") not in KINDS:
        raise bad(f"kind={manifest.get('kind')!r} is not one of {', '.join(KINDS)}")
    if manifest.get("metric") != METRIC:
        raise bad(f"metric={manifest.get('metric')!r} is not {METRIC!r}")
    for key, minimum in (("dimension", 1), ("count", 0)):
        if not _is_int(manifest.get(key), minimum):
            raise bad(f"{key}={manifest.get(key)!r} must be an integer >= {minimum}")
    count = manifest["count"]
    if not _is_strings(manifest.get("paths"), count):
        raise bad(f"paths must be a list of {count} strings (one per vector), got {_describe(manifest.get('paths'))}")
    if "labels" in manifest and not _is_strings(manifest["labels"], count):
        raise bad(f"labels must be a list of {count} strings (one per vector), got {_describe(manifest['labels'])}")
    if not isinstance(manifest.get("model"), dict):
        raise bad(f"model={manifest.get('model')!r} must be an object")
    if manifest["kind"] == "ivf":
        if not _is_int(manifest.get("nlist"), 1):
            raise bad(f"nlist={manifest.get('nlist')!r} must be an integer >= 1")
        nprobe = manifest.get("nprobe")
        if not _is_int(nprobe, 1) or nprobe > manifest["nlist"]:
            raise bad(f"nprobe={nprobe!r} must be an integer in [1, nlist={manifest['nlist']}]")


def _describe(value: Any) -> str:
    if isinstance(value, list):
        kinds = sorted({type(v).__name__ for v in value})
        return f"a list of {len(value)} ({', '.join(kinds) or 'empty'})"
    return f"a {type(value).__name__}"


def _check_against_index(index: Any, manifest: dict[str, Any], index_path: Path, manifest_path: Path) -> None:
    """DataError unless the faiss index holds what the manifest says: count, width, kind and metric."""
    faiss = faiss_module()
    if index.ntotal != manifest["count"] or index.d != manifest["dimension"]:
        raise DataError(f"{index_path} holds {index.ntotal} {index.d}-d vectors but {manifest_path} lists "
                        f"{manifest['count']} {manifest['dimension']}-d ones: rebuild the index")
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise DataError(f"{index_path} does not rank by inner product (metric type {index.metric_type}), as "
                        f"{manifest_path} says: rebuild the index")
    is_ivf = faiss.try_extract_index_ivf(index) is not None
    if is_ivf != (manifest["kind"] == "ivf"):
        raise DataError(f"{index_path} is {'an ivf' if is_ivf else 'a flat'} index but {manifest_path} says "
                        f"kind={manifest['kind']!r}: rebuild the index")


def served_identity(client: EmbeddingClient) -> ServedIdentity:
    """The model `client` is answered by: its name, the version Triton serves, file sha256 and verified lineage."""
    config = client.served.config
    params = config_parameters(config)
    lineage = config_lineage(config, source=f"model {client.model_name!r} at {client.url}") or {}
    return ServedIdentity(name=client.model_name, version=client.model_version or served_version(client),
                          onnx_sha256=params.get("onnx_sha256", ""), lineage_verified=lineage.get(VERIFIED_KEY, ""),
                          lineage=lineage)


def served_version(client: EmbeddingClient) -> str:
    """The version an unpinned request reaches: the highest version Triton reports ready."""
    metadata = client.call(f"reading the metadata of model {client.model_name!r}", client.raw.get_model_metadata,
                           client.model_name, as_json=True, client_timeout=client.timeout_s)
    versions = [int(v) for v in metadata.get("versions", []) if str(v).isdigit()]
    if not versions:
        raise ServingError(f"model {client.model_name!r} at {client.url} reports no ready version")
    return str(max(versions))


def check_same_model(index: SimilarityIndex, served: ServedIdentity, *, where: str, allow_mismatch: bool = False
                     ) -> None:
    """ServingError, in one line naming both, when `served` is not the model the index was built from."""
    built = index.model
    if not built.differs_from(served):
        return
    message = (f"the index {where} was built from model {built.describe()} but the server answers with "
               f"{served.describe()}")
    if allow_mismatch:
        logger.warning("%s; searching anyway (--allow-model-mismatch)", message)
        return
    raise ServingError(f"{message}: rebuild it with `dino-mlops index build` or pass --allow-model-mismatch")


def open_for_search(folder: str | Path, client: EmbeddingClient, *, allow_mismatch: bool = False) -> SimilarityIndex:
    """The index in `folder`, checked to come from the model `client` is answered by (see check_same_model)."""
    index = load_index(folder)
    check_same_model(index, served_identity(client), where=str(folder), allow_mismatch=allow_mismatch)
    return index


def neighbours(index: SimilarityIndex, queries: np.ndarray, k: int) -> list[list[dict[str, Any]]]:
    """For each query, its k nearest rows: {"path", "label" (when known), "similarity"}, best first."""
    similarities, ids = index.search(queries, k)
    paths, labels = index.paths, index.manifest.get("labels")
    found = []
    for row_sims, row_ids in zip(similarities.tolist(), ids.tolist(), strict=True):
        found.append([{"path": paths[i], **({"label": labels[i]} if labels else {}), "similarity": round(s, 6)}
                      for s, i in zip(row_sims, row_ids, strict=True) if i >= 0])
    return found


def relative_paths(paths: Sequence[str], inputs: Sequence[str | Path]) -> tuple[list[str], str]:
    """(paths relative to the inputs' common folder, that folder): what the manifest stores."""
    folders = [p if p.is_dir() else p.parent for p in (Path(i).resolve() for i in inputs)]
    root = Path(os.path.commonpath(folders)) if folders else Path.cwd()
    return [Path(p).resolve().relative_to(root).as_posix() for p in paths], str(root)
