"""`dino-mlops data capture list / erase / expire`: what an operator runs against the store."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dino_model.capture import CaptureSettings, CaptureStore, Sampler
from dino_model.cli.main import main


def png(seed: int) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()

TODAY = datetime.now(UTC)


def fill(store: Path, days: int) -> list[bytes]:
    images = [png(i) for i in range(days)]
    with Sampler(CaptureSettings(enabled=True, store=str(store), rate=1.0, retention_days=365)) as sampler:
        for i, data in enumerate(images):
            sampler.offer(data, model_version="1", now=TODAY - timedelta(days=days - 1 - i))
    return images


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict]:
    code = main(["data", "capture", *argv])
    out, _ = capsys.readouterr()
    return code, json.loads(out) if code == 0 else {}


def test_list_erase_and_expire(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "store"
    images = fill(store, 5)
    days = CaptureStore(store).days()
    code, listed = run(capsys, "list", "--store", str(store))
    assert code == 0 and listed["days"] == dict.fromkeys(days, 1)

    (tmp_path / "mine.png").write_bytes(images[4])  # a user asks for their image to be removed
    code, result = run(capsys, "erase", "--store", str(store), "--image", str(tmp_path / "mine.png"))
    assert result["erased_images"] == 1 and CaptureStore(store).count(days[4]) == 0

    code, result = run(capsys, "erase", "--store", str(store), "--before", days[1])
    assert result["erased_days"] == [days[0]]
    code, result = run(capsys, "expire", "--store", str(store), "--retention-days", "3")
    assert result["erased_days"] == [days[1]] and CaptureStore(store).days() == days[2:]
    code, result = run(capsys, "erase", "--store", str(store), "--all")
    assert CaptureStore(store).days() == []


def test_erase_needs_to_be_told_what(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "capture", "erase", "--store", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("say what to erase: --day, --before, --sha256, --image or --all")


def test_a_store_is_required(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("DINO_CAPTURE_STORE", raising=False)
    assert main(["data", "capture", "list"]) == 2
    assert "no capture store given" in capsys.readouterr().err
