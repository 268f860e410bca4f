"""`dino-mlops export` end to end: checkpoint -> contract -> ONNX (fp32, optional fp16) -> parity -> report.

The report uses the shared metrics-JSON envelope (dino_model/eval/report.py), so pipelines read the
parity numbers the same way they read evaluation scores. A file that fails its parity check is
removed, so nothing downstream can pick it up. The report is also the export record of each file
(`details.files.<precision>.sha256` and `details.lineage`), signed per file with the export's
private key (`details.files.<precision>.signature`, dino_model/export/signing.py): serving checks a
file against it, and the signature with the trusted public keys, before it serves the file's lineage
as verified (dino_model/export/lineage.py).
The export also writes the drift reference `<stem>.drift.npz`, embeddings of a sample of the
training images that serving compares its requests with (dino_model/monitoring/drift.py), and records
its sha256 in the report (`details.drift`). Given captured images (`score_drift_on`), it scores their
newest against that reference (dino_model/export/drift_score.py): `captured_drift_ratio` in the metrics.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from dino_model.config import TrainConfig, config_from_dict
from dino_model.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from dino_model.errors import ExportError
from dino_model.eval.report import build_report, write_report
from dino_model.export.contract import EMBEDDING, PATCH_TOKENS, ModelContract
from dino_model.export.drift_score import embed, image_folders, score_drift
from dino_model.export.lineage import build_lineage, default_metric_reports, file_sha256, read_metrics
from dino_model.export.onnx import EmbeddingModel, export_onnx
from dino_model.export.options import ExportOptions
from dino_model.export.parity import FP16_TOLERANCE, check_parity, parity_inputs
from dino_model.export.signing import sign, signing_key
from dino_model.logs import progress
from dino_model.models.loading import load_backbone
from dino_model.monitoring.drift import REFERENCE_SIZE, DriftReference, build_reference, drift_path
from dino_model.runtime.checkpoint import load_checkpoint

logger = logging.getLogger(__name__)

DINO_RESIZE_RATIO = 256 / 224  # resize before the centre crop, as the official evaluations do


def export_checkpoint(checkpoint: str | Path, output: str | Path, options: ExportOptions | None = None
                      ) -> dict[str, Any]:
    """Export the teacher backbone of `checkpoint` to `output` (.onnx) and verify it; returns the report."""
    opts = options or ExportOptions()
    output = Path(output)
    if output.suffix != ".onnx":
        raise ExportError(f"output {output} must end in .onnx")
    key = signing_key()  # a misconfigured key fails here, before minutes of export
    ckpt = load_checkpoint(checkpoint)
    train_cfg = config_from_dict(ckpt["config"]) if "config" in ckpt else None
    backbone, model_cfg = load_backbone(checkpoint)
    contract = build_contract(backbone, model_cfg, train_cfg, opts, checkpoint=checkpoint,
                              data_version=opts.data_version or str(ckpt.get("data_version", "")),
                              init=ckpt.get("init"))
    del ckpt
    fp32 = EmbeddingModel(backbone, patch_tokens=opts.patch_tokens)
    with tempfile.TemporaryDirectory(prefix="dino-parity-") as scratch:
        image_dir = _parity_image_dir(opts.parity_images, train_cfg, Path(scratch))
        inputs = parity_inputs(contract, image_dir=image_dir, n_random=opts.n_random)
    files, parity = {}, {}
    variants = [("fp32", output, fp32, opts.tolerance)]
    if opts.fp16:
        fp16 = EmbeddingModel(backbone, patch_tokens=opts.patch_tokens, fp16=True)
        variants.append(("fp16", output.with_suffix(".fp16.onnx"), fp16, max(opts.tolerance, FP16_TOLERANCE)))
    # the bar's stages: each precision's export, then its parity check
    stages = [(variant, stage) for variant in variants for stage in ("onnx", "parity")]
    for (precision, path, model, tolerance), stage in progress(stages, desc="export", total=len(stages)):
        if stage == "onnx":
            export_onnx(model, path, replace(contract, precision=precision), opset=opts.opset)
            continue
        report = check_parity(fp32, path, inputs, output_names=model.output_names, tolerance=tolerance)
        parity[precision] = report.to_dict()
        if not report.passed:
            path.unlink(missing_ok=True)
            raise ExportError(f"{precision} export differs from PyTorch by {report.worst:.3g} > {tolerance:g} "
                              f"({report.max_abs_diff}); {path} was removed")
        digest = file_sha256(path)
        files[precision] = {"path": str(path), "sha256": digest, "bytes": path.stat().st_size,
                            "signature": sign(key, digest, contract.lineage).to_dict()}
    metrics = {f"parity_max_abs_diff_{p}": r["worst"] for p, r in parity.items()}
    details = {"files": files, "parity": parity, "opset": opts.opset, "parity_images": str(image_dir),
               "contract": contract.to_properties(), "lineage": dict(contract.lineage)}
    drift = write_drift_reference(backbone, contract, train_cfg, output, images=opts.drift_images)
    if drift is not None:
        details["drift"] = drift
    captured = _captured_drift(backbone, contract, train_cfg, drift, opts.score_drift_on)
    if captured is not None:
        details["captured_drift"] = captured
        metrics |= {"captured_drift_ratio": captured["ratio"], "captured_drift_images": captured["images"]}
    report = build_report("export", checkpoint, metrics, details)
    report_path = write_report(report, output.with_suffix(".export.json"))
    return report | {"report_path": str(report_path)}


def write_drift_reference(backbone, contract: ModelContract, train_cfg: TrainConfig | None, output: Path,
                          *, images: Sequence[str] = (), size: int = REFERENCE_SIZE) -> dict[str, Any] | None:
    """`<stem>.drift.npz` from the embeddings of up to `size` training images; its record, or None.

    Serving compares its requests' embeddings with this sample (dino_model/monitoring/drift.py).
    `images` are the training folders (default: the checkpoint's data.root and data.extra_roots), sampled
    uniformly over their union, so a model trained on train/ plus captured/ images is compared with both
    in the proportion it saw them. Skipped, with a warning, when no folder exists here or the checkpoint
    carries no evaluation settings (official weights); a folder missing here is left out with a warning.
    """
    roots = [Path(r) for r in (images or (_trained_roots(train_cfg) if train_cfg is not None else ()))]
    present = [r for r in roots if r.is_dir()]
    for absent in sorted(set(roots) - set(present)):
        logger.warning("training image folder %s is not here: the drift reference of %s leaves it out", absent, output)
    if not present or train_cfg is None:
        logger.warning("no training image folder (%s) here: no drift reference written for %s",
                       ", ".join(map(str, roots)) or None, output)
        return None
    dataset = image_folders(present, contract, train_cfg)
    source = ", ".join(map(str, present))
    if len(dataset) < 4:
        logger.warning("%s holds %d images: too few for a drift reference of %s", source, len(dataset), output)
        return None
    picked = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:size].tolist()
    features = embed(backbone, dataset, picked, batch_size=train_cfg.eval.batch_size, desc="drift reference")
    reference = build_reference(features, size=size)
    path = reference.save(drift_path(output))
    logger.info("drift reference of %d training images from %s: window %d, MMD^2 threshold %.3g -> %s",
                len(picked), source, reference.window, reference.threshold, path)
    return {"path": str(path), "sha256": file_sha256(path), "images": len(picked), "source": source,
            "window": reference.window, "threshold": reference.threshold, "bandwidth": reference.bandwidth}


def _captured_drift(backbone, contract: ModelContract, train_cfg: TrainConfig | None, drift: dict[str, Any] | None,
                    folders: Sequence[str]) -> dict[str, Any] | None:
    """The drift of the newest captured images in `folders` against the reference just written, or None."""
    if not folders:
        return None
    if drift is None or train_cfg is None:
        logger.warning("no drift reference was written: the drift of %s is not scored", ", ".join(folders))
        return None
    score = score_drift(backbone, contract, train_cfg, DriftReference.load(drift["path"]), folders)
    return None if score is None else score | {"source": ", ".join(folders)}


def _trained_roots(cfg: TrainConfig) -> list[str]:
    return [cfg.data.root, *cfg.data.extra_roots]


def build_contract(backbone, model_cfg, train_cfg: TrainConfig | None, opts: ExportOptions, *,
                   checkpoint: str | Path, data_version: str, init: dict[str, Any] | None = None) -> ModelContract:
    """Sizes from the checkpoint's eval config (or the override), ImageNet statistics, lineage (with `init`,
    the checkpoint's record of the weights its run started from)."""
    if train_cfg is not None and opts.image_size in (None, train_cfg.eval.image_size):
        size, resize = train_cfg.eval.image_size, train_cfg.eval.resize_size
    else:
        size = opts.image_size or model_cfg.img_size
        resize = round(size * DINO_RESIZE_RATIO)
    patch = model_cfg.patch_size if model_cfg.arch.startswith("vit") else 0
    if patch and size % patch:
        raise ExportError(f"image size {size} is not a multiple of the patch size {patch}")
    reports = opts.metrics_reports or default_metric_reports(checkpoint)
    revision = train_cfg.data.revision if train_cfg is not None and train_cfg.data.version == data_version else ""
    lineage = build_lineage(data_version=data_version, data_revision=revision, metrics=read_metrics(reports),
                            checkpoint=checkpoint, init=init)
    return ModelContract(
        image_size=size, resize_size=resize, embed_dim=int(backbone.num_features),
        mean=IMAGENET_MEAN, std=IMAGENET_STD, num_patches=(size // patch) ** 2 if opts.patch_tokens else 0,
        arch=model_cfg.arch, patch_size=patch, outputs=(EMBEDDING, PATCH_TOKENS) if opts.patch_tokens else (EMBEDDING,),
        lineage=lineage,
    )


def _parity_image_dir(given: str | None, cfg: TrainConfig | None, scratch: Path) -> Path:
    """Real images for the parity check: the given folder, the training run's, or skimage's photos."""
    if given:
        return Path(given)
    for candidate in (cfg.data.knn_val, cfg.data.root) if cfg else ():
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    from dino_model.data.materialize import materialize

    logger.info("no image folder for the parity check: using scikit-image's sample photographs")
    return materialize("samples", scratch) / "train"
