"""A self-contained HTML page of attention maps, for the KFP UI and other viewers without file access.

The KFP UI renders an HTML artifact inline but cannot follow relative links, so the grids are
embedded as base64 PNGs.
"""

from __future__ import annotations

import base64
import html
import tempfile
from pathlib import Path
from typing import Any

from dino_model.data.datasets import scan_image_folder
from dino_model.eval.attention import run_attention_maps


def pick_images(root: str | Path, n_images: int) -> list[Path]:
    """Up to n images, one per class in turn, so the page shows the variety of the set."""
    classes, samples, _ = scan_image_folder(Path(root))
    by_class: dict[int, list[Path]] = {}
    for s in samples:
        by_class.setdefault(s.label, []).append(s.path)
    picked: list[Path] = []
    for i in range(max(len(v) for v in by_class.values())):
        picked += [paths[i] for paths in by_class.values() if i < len(paths)]
        if len(picked) >= n_images:
            break
    return picked[:n_images]


def attention_html(checkpoint: str | Path, image_root: str | Path, output: str | Path, *, n_images: int = 4,
                   image_size: tuple[int, int] | None = None) -> dict[str, Any]:
    """Write the page to `output`; returns the attention report (metrics JSON envelope).

    image_size None keeps each image's own size (small images stay small: one map per patch).
    """
    images = pick_images(image_root, n_images)
    with tempfile.TemporaryDirectory(prefix="dino-attention-") as scratch:
        report = run_attention_maps(checkpoint, images, output_dir=scratch, image_size=image_size)
        figures = "".join(_figure(Path(s["folder"]) / "grid.png", Path(s["image"]))
                          for s in report["details"]["images"])
    metrics = "".join(f"<li>{html.escape(k)}: {v:.4g}</li>" for k, v in report["metrics"].items())
    page = (f"<html><body><h2>Attention maps (last block, CLS query)</h2><p>{html.escape(str(checkpoint))}</p>"
            f"<ul>{metrics}</ul>{figures}</body></html>")
    Path(output).write_text(page)
    return report


def _figure(grid: Path, image: Path) -> str:
    data = base64.b64encode(grid.read_bytes()).decode()
    return (f'<figure><img src="data:image/png;base64,{data}" style="image-rendering:pixelated;max-width:100%">'
            f"<figcaption>{html.escape(image.name)}: heads (top), 60% mass masks (bottom)</figcaption></figure>")
