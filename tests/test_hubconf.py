"""hubconf.py: torch.hub builds the exported backbone from a checkout, needing only torch, timm and safetensors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dino_model.errors import ExportError
from dino_model.models.loading import load_backbone

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    from dino_model.export.safetensors_run import export_safetensors

    return Path(export_safetensors(tiny_checkpoint, tmp_path_factory.mktemp("hub") / "dino.safetensors")["path"])


def test_hub_load_builds_the_same_model(weights: Path, tiny_checkpoint: Path) -> None:
    model = torch.hub.load(str(REPO_ROOT), "dino_vit", source="local", weights=str(weights))
    assert not model.training
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(images), load_backbone(tiny_checkpoint)[0](images), rtol=0, atol=0)


def test_hub_entry_refuses_another_family(weights: Path) -> None:
    with pytest.raises(ExportError, match="holds a vit_tiny backbone, not a resnet one"):
        torch.hub.load(str(REPO_ROOT), "dino_resnet", source="local", weights=str(weights))


def test_hubconf_imports_nothing_heavy(weights: Path) -> None:
    """Importing hubconf loads no project module; building a model loads no ONNX, config or training code."""
    script = f"""
import json, sys
sys.path.insert(0, {str(REPO_ROOT)!r})
import hubconf
seen = lambda: sorted(m for m in sys.modules if m.split(".")[0] in ("dino_model", "torch", "timm", "onnx"))
at_import = seen()
hubconf.dino_vit({str(weights)!r})
after = [m for m in seen() if m.startswith(("dino_model", "onnx"))]
print(json.dumps({{"at_import": at_import, "after": after, "deps": hubconf.dependencies}}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["at_import"] == [] and seen["deps"] == ["torch", "timm", "safetensors"]
    assert set(seen["after"]) == {"dino_model", "dino_model.errors", "dino_model.export",
                                  "dino_model.export.safetensors",
                                  "dino_model.runtime", "dino_model.runtime.atomic"}  # the standard library only
