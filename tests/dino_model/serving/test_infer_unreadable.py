"""`dino-mlops infer` on a real tritonserver: a decompression bomb is named and skipped, the rest embedded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.triton


def test_cli_infer_skips_and_names_a_decompression_bomb(served, digits_root: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture, run_cli) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    good = sorted((digits_root / "val" / "4").glob("*.png"))[:3]
    for image in good:
        shutil.copy(image, folder / image.name)
    bomb_in_folder, bomb = folder / "huge.png", tmp_path / "huge-single.png"
    Image.new("1", (20000, 20000), 0).save(bomb, optimize=True)
    shutil.copy(bomb, bomb_in_folder)
    out = tmp_path / "e.json"
    assert run_cli(["infer", str(folder), str(bomb), str(good[0]), "--url", served.grpc_url,
                    "--output", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 4 and summary["embedding_dim"] == 64
    skipped = {entry["path"]: entry["reason"] for entry in summary["skipped"]}
    assert set(skipped) == {str(bomb_in_folder), str(bomb)}
    assert all("too large to decode safely" in reason for reason in skipped.values())
    saved = json.loads(out.read_text())
    assert len(saved["items"]) == 4 and {s["path"] for s in saved["skipped"]} == set(skipped)
