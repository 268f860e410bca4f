"""Last-block attention maps: recomputed attention vs timm's own, the 60 % mass threshold, files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dino_model.errors import ConfigError
from dino_model.eval.attention import cls_attention_maps, last_self_attention, mass_threshold, run_attention_maps
from dino_model.models.loading import load_backbone


def timm_attention(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Independent reference: unfused attention, captured at the input of the last block's attn_drop."""
    attn = model.blocks[-1].attn
    captured = {}
    handle = attn.attn_drop.register_forward_hook(lambda _m, args, _out: captured.__setitem__("a", args[0]))
    fused, attn.fused_attn = attn.fused_attn, False
    try:
        with torch.inference_mode():
            model(images)
    finally:
        attn.fused_attn = fused
        handle.remove()
    return captured["a"]


def test_recomputed_attention_matches_timm_unfused(random_checkpoint: Path) -> None:
    model, _ = load_backbone(random_checkpoint)
    images = torch.randn(2, 3, 32, 48)  # non-square: interpolated position embeddings
    ours = last_self_attention(model, images)
    assert ours.shape == (2, 2, 1 + 8 * 12, 1 + 8 * 12)
    torch.testing.assert_close(ours, timm_attention(model, images), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.sum(dim=-1), torch.ones(2, 2, 97))
    assert model.blocks[-1].attn.fused_attn == model.blocks[0].attn.fused_attn  # the model is left as it was
    torch.testing.assert_close(last_self_attention(model, images, cls_only=True), ours[:, :, :1])


def test_cls_maps_have_one_map_per_head(random_checkpoint: Path) -> None:
    model, _ = load_backbone(random_checkpoint)
    maps = cls_attention_maps(model, torch.randn(1, 3, 32, 48))
    assert maps.shape == (2, 8, 12)
    assert torch.all(maps.flatten(1).sum(dim=1) < 1)  # the CLS token's attention to itself is left out


def loop_threshold(maps: torch.Tensor, keep: float) -> torch.Tensor:
    """The official steps, one head at a time."""
    out = []
    for head in maps.flatten(1):
        values, idx = torch.sort(head)
        values = values / values.sum()
        cumval = torch.cumsum(values, dim=0)
        kept = cumval > (1 - keep)
        out.append(kept[torch.argsort(idx)])
    return torch.stack(out).reshape(maps.shape)


def test_mass_threshold_by_hand_and_against_the_official_steps() -> None:
    maps = torch.tensor([[[0.4, 0.3], [0.2, 0.1]]])
    # ascending 0.1, 0.2, 0.3, 0.4 -> cumsum 0.1, 0.3, 0.6, 1.0 > 0.4 keeps 0.3 and 0.4 (70 % of the mass)
    assert mass_threshold(maps, 0.6).tolist() == [[[True, True], [False, False]]]
    random_maps = torch.rand(3, 7, 9)
    assert torch.equal(mass_threshold(random_maps, 0.6), loop_threshold(random_maps, 0.6))
    assert mass_threshold(random_maps, 1.0).all()
    with pytest.raises(ConfigError):
        mass_threshold(random_maps, 1.5)


def test_run_writes_overlays_grid_and_report(random_checkpoint: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    image = tmp_path / "in" / "sample.png"
    image.parent.mkdir()
    Image.fromarray(rng.integers(0, 255, (30, 45, 3), dtype=np.uint8)).save(image)
    report = run_attention_maps(random_checkpoint, [image], output_dir=tmp_path / "out", image_size=(34, 50))
    out = tmp_path / "out" / "sample"
    names = sorted(p.name for p in out.iterdir())
    assert names == ["attn-head0.png", "attn-head1.png", "grid.png", "img.png",
                     "mask_th0.6_head0.png", "mask_th0.6_head1.png"]
    with Image.open(out / "img.png") as img:
        assert img.size == (48, 32)  # 34 x 50 cropped down to multiples of the patch (4)
    with Image.open(out / "grid.png") as grid:
        assert grid.size == (2 * 48 + 2, 2 * 32 + 2)  # heads across; heat maps above masks
    saved = json.loads((tmp_path / "out" / "attention.json").read_text())
    assert saved["evaluation"] == "attention" and saved == {k: v for k, v in report.items() if k != "report_path"}
    kept = saved["details"]["images"][0]["kept_fraction"]
    assert all(0 < f < 1 for f in kept)
    assert 0 < saved["metrics"]["attention_entropy_mean"] <= 1


def test_native_size_and_repeated_stems(random_checkpoint: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    paths = []
    for folder in ("a", "b"):
        path = tmp_path / folder / "same.png"
        path.parent.mkdir()
        Image.fromarray(rng.integers(0, 255, (21, 30, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    report = run_attention_maps(random_checkpoint, paths, output_dir=tmp_path / "out", image_size=None,
                                threshold=None)
    folders = [Path(s["folder"]).name for s in report["details"]["images"]]
    assert folders == ["same", "same-1"]
    assert report["details"]["images"][0]["patch_grid"] == [5, 7]  # 21 x 30 cropped to 20 x 28
    with Image.open(tmp_path / "out" / "same-1" / "grid.png") as grid:
        assert grid.size == (2 * 28 + 2, 20)  # heat maps only: no threshold, no mask row
