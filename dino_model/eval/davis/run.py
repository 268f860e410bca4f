"""The DAVIS evaluation end to end: propagate each sequence, write result PNGs, score, report.

Writes, under the output folder, `results/<sequence>/<frame>.png` (the DAVIS results layout, first
frame = its annotation), `global_results-<split>.csv` and `per-sequence_results-<split>.csv` (the
official files; the latter has one row per object), `davis.json` (the shared metrics envelope,
keys in docs/evaluation.md) and `davis.md`.
"""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from dino_model.errors import ConfigError
from dino_model.eval.davis.config import DavisConfig
from dino_model.eval.davis.evaluation import evaluate_sequence
from dino_model.eval.davis.features import FeatureFn, colour_features, stream_features, vit_patch_features
from dino_model.eval.davis.frames import first_labels, frame_tensor, labels_to_mask, target_size
from dino_model.eval.davis.io import (
    annotation_paths,
    frame_paths,
    list_sequences,
    read_frame,
    read_mask,
    write_indexed_png,
)
from dino_model.eval.davis.propagation import propagate_video
from dino_model.eval.davis.statistics import GLOBAL_COLUMNS, global_statistics, object_table
from dino_model.eval.report import build_report, metrics_table, write_report

logger = logging.getLogger(__name__)

METRIC_NAMES = {"J&F-Mean": "davis_jf_mean", "J-Mean": "davis_j_mean", "J-Recall": "davis_j_recall",
                "J-Decay": "davis_j_decay", "F-Mean": "davis_f_mean", "F-Recall": "davis_f_recall",
                "F-Decay": "davis_f_decay"}


def propagate_sequence(davis_root: str | Path, sequence: str, results_dir: str | Path, feature_fn: FeatureFn, *,
                       cfg: DavisConfig, patch_size: int, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Propagate the first annotation of `sequence` and write one result PNG per frame."""
    frames = frame_paths(davis_root, sequence, resolution=cfg.resolution)[: cfg.max_frames or None]
    first = annotation_paths(davis_root, sequence, resolution=cfg.resolution, annotations=cfg.annotations)[0]
    first_mask = read_mask(first, mask_format=cfg.mask_format)
    height, width = read_frame(frames[0]).shape[:2]
    size = target_size(height, width, short_side=cfg.short_side, multiple=cfg.size_multiple)
    grid = (size[0] // patch_size, size[1] // patch_size)
    out = Path(results_dir) / sequence
    write_indexed_png(out / f"{frames[0].stem}.png", first_mask)
    tensors = (frame_tensor(read_frame(p), size) for p in frames)
    features = stream_features(tensors, feature_fn, batch_size=cfg.frames_per_batch, device=device)
    soft_maps = propagate_video(features, first_labels(first_mask, grid).to(device), params=cfg.propagation)
    for path, soft in zip(frames[1:], soft_maps, strict=True):
        write_indexed_png(out / f"{path.stem}.png",
                          labels_to_mask(soft.cpu(), patch_size=patch_size, out_size=(height, width)))
    logger.info("%s: propagated %d object(s) over %d frames at %dx%d (patch grid %dx%d)", sequence,
                int(first_mask.max()), len(frames), *size, *grid)
    return {"frames": len(frames), "frame_size": [height, width], "resized_to": list(size), "patch_grid": list(grid)}


def score_results(davis_root: str | Path, results_dir: str | Path, cfg: DavisConfig,
                  sequences: list[str]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """(global table, per-object rows) of a results folder, as the official semi-supervised evaluation."""
    objects = []
    for seq in sequences:
        objects += evaluate_sequence(davis_root, results_dir, seq, resolution=cfg.resolution,
                                     annotations=cfg.annotations, mask_format=cfg.mask_format,
                                     max_frames=cfg.max_frames, bound_th=cfg.bound_th)
    rows = object_table(objects)
    return global_statistics(rows), rows


def run_davis_eval(checkpoint: str | Path | None, cfg: DavisConfig, *, davis_root: str | Path,
                   output_dir: str | Path, device: str = "cpu", score_only: bool = False) -> dict[str, Any]:
    """Propagate (unless score_only) and score every sequence; writes and returns the metrics report.

    checkpoint: the model whose patch features propagate labels; unused with cfg.features="colour".
    """
    cfg.validate()
    output_dir = Path(output_dir)
    results_dir = output_dir / "results"
    sequences = list(cfg.sequences) or list_sequences(davis_root, split=cfg.split, year=cfg.year)
    source = "results:" + str(results_dir) if score_only else _source_name(checkpoint, cfg)
    start = time.perf_counter()
    per_sequence: dict[str, Any] = {}
    n_frames = 0
    if not score_only:
        feature_fn, patch_size = _feature_source(checkpoint, cfg, device)
        for seq in sequences:
            per_sequence[seq] = propagate_sequence(davis_root, seq, results_dir, feature_fn, cfg=cfg,
                                                   patch_size=patch_size, device=device)
            n_frames += per_sequence[seq]["frames"]
    propagate_s = time.perf_counter() - start
    table, rows = score_results(davis_root, results_dir, cfg, sequences)
    csv_paths = _write_csvs(output_dir, table, rows, split=cfg.split)
    metrics = {METRIC_NAMES[name]: value for name, value in table.items()}
    details = {"davis_root": str(davis_root), "results_dir": str(results_dir), "sequences": sequences,
               "n_objects": len(rows), "per_object": rows, "per_sequence": per_sequence,
               "propagation_seconds": propagate_s, "frames_per_second": n_frames / propagate_s if n_frames else None,
               "csv": csv_paths, "config": asdict(cfg)}
    report = build_report("davis", source, metrics, details)
    path = write_report(report, output_dir / "davis.json", _markdown(source, table, rows))
    logger.info("DAVIS J&F-Mean %.3f (J %.3f, F %.3f) over %d object(s) in %d sequence(s)", table["J&F-Mean"],
                table["J-Mean"], table["F-Mean"], len(rows), len(sequences))
    return report | {"report_path": str(path)}


def _source_name(checkpoint: str | Path | None, cfg: DavisConfig) -> str:
    return f"oracle:colour/{cfg.oracle_patch_size}" if cfg.features == "colour" else str(checkpoint)


def _feature_source(checkpoint: str | Path | None, cfg: DavisConfig, device: str) -> tuple[FeatureFn, int]:
    if cfg.features == "colour":
        return colour_features(cfg.oracle_patch_size), cfg.oracle_patch_size
    if not checkpoint:
        raise ConfigError("DAVIS propagation with features='vit' needs a checkpoint (or use features='colour')")
    from dino_model.models.backbone import is_vit
    from dino_model.models.loading import load_backbone

    backbone, model_cfg = load_backbone(checkpoint)
    if not is_vit(model_cfg):
        raise ConfigError(f"label propagation needs ViT patch tokens; {checkpoint} holds a {model_cfg.arch}")
    return vit_patch_features(backbone.to(device)), model_cfg.patch_size


def _write_csvs(output_dir: Path, table: dict[str, float], rows: list[dict[str, Any]], *, split: str) -> list[str]:
    output_dir.mkdir(parents=True, exist_ok=True)
    global_csv = output_dir / f"global_results-{split}.csv"
    with global_csv.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(GLOBAL_COLUMNS)
        writer.writerow([f"{table[name]:.3f}" for name in GLOBAL_COLUMNS])
    per_object_csv = output_dir / f"per-sequence_results-{split}.csv"
    with per_object_csv.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["Sequence", "J-Mean", "F-Mean"])
        writer.writerows([row["Sequence"], f"{row['J-Mean']:.3f}", f"{row['F-Mean']:.3f}"] for row in rows)
    return [str(global_csv), str(per_object_csv)]


def _markdown(source: str, table: dict[str, float], rows: list[dict[str, Any]]) -> str:
    lines = [f"# DAVIS video object segmentation\n\n{source}: J&F-Mean {table['J&F-Mean']:.3f} over "
             f"{len(rows)} object(s)\n", metrics_table(table), "| object | J-Mean | F-Mean |", "|---|---|---|"]
    lines += [f"| {row['Sequence']} | {row['J-Mean']:.3f} | {row['F-Mean']:.3f} |" for row in rows]
    return "\n".join(lines) + "\n"
