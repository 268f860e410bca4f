"""The image entry point's Python step in-process: the client's preprocessing bit for bit, the client's cap.

The step (python_backend/preprocess_model.py) runs under a stand-in for Triton's pb_utils on the same
files as the client (`dino-mlops infer`: data.folders.load_rgb + serving.images.Preprocess): the
tensors must be equal, not close. Its copy of the pixel cap's rules must be pixel_cap's.
"""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dino_model.data import pixel_cap
from dino_model.data.folders import load_rgb
from dino_model.export.onnx import read_contract
from dino_model.serving.images import transform_for
from dino_model.triton.config import RepositoryOptions
from dino_model.triton.python_backend import preprocessing
from dino_model.triton.repository import read_config, write_model_repository


@pytest.fixture
def step(monkeypatch: pytest.MonkeyPatch, tiny_onnx: Path, tmp_path: Path):
    """The preprocessing step loaded from a written repository's version folder, on a stand-in pb_utils."""
    errors: list[tuple[str, str]] = []
    pb = types.ModuleType("triton_python_backend_utils")
    pb.Tensor = lambda name, array: types.SimpleNamespace(name=name, array=array)
    pb.InferenceResponse = lambda output_tensors, error=None: types.SimpleNamespace(tensors=output_tensors,
                                                                                    error=error)
    pb.TritonError = type("TritonError", (), {"INVALID_ARG": "INVALID_ARG",
                                              "__init__": lambda self, m, c=None: errors.append((m, c))})
    pb.get_input_tensor_by_name = lambda request, name: types.SimpleNamespace(as_numpy=lambda: request)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    for name in ("preprocessing", "versions"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    write_model_repository(tiny_onnx, tmp_path, RepositoryOptions(flavour="cpu"))
    folder = tmp_path / "dino_preprocess"
    spec = importlib.util.spec_from_file_location("dino_preprocess_under_test", folder / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert Path(sys.modules["preprocessing"].__file__) == folder / "1" / "preprocessing.py"  # the shipped copy
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps(read_config(folder)), "model_repository": str(folder),
                      "model_version": "1", "model_name": folder.name})
    return types.SimpleNamespace(model=model, errors=errors)


def _files(digits_root: Path, folder: Path) -> list[Path]:
    sources = sorted((digits_root / "val").rglob("*.png"))[:6]
    sizes = [(40, 40), (97, 31), (17, 64), (300, 200), (24, 24), (55, 80)]
    paths = []
    for i, (source, size) in enumerate(zip(sources, sizes, strict=True)):
        suffix, fmt = [(".jpg", "JPEG"), (".png", "PNG"), (".webp", "WEBP")][i % 3]
        paths.append(folder / f"{i}{suffix}")
        Image.open(source).convert("L" if i == 4 else "RGB").resize(size).save(paths[-1], fmt)  # one greyscale
    return paths


def test_the_step_equals_the_client_bit_for_bit(step, tiny_onnx: Path, digits_root: Path, tmp_path: Path) -> None:
    paths = _files(digits_root, tmp_path)
    transform = transform_for(read_contract(tiny_onnx))
    client = np.stack([transform(load_rgb(p)) for p in paths])
    (response,) = step.model.execute([np.array([p.read_bytes() for p in paths], dtype=np.object_).reshape(-1, 1)])
    (tensor,) = response.tensors
    assert tensor.name == "pixels" and tensor.array.dtype == np.float32
    assert np.array_equal(tensor.array, client)


def test_bad_items_fail_their_request_alone_naming_them(step, digits_root: Path, tmp_path: Path) -> None:
    good = [p.read_bytes() for p in _files(digits_root, tmp_path)[:2]]
    ok, bad = step.model.execute([np.array(good, dtype=np.object_).reshape(-1, 1),
                                  np.array([b"", good[0], good[1][:40]], dtype=np.object_).reshape(-1, 1)])
    assert ok.error is None and ok.tensors[0].array.shape[0] == 2
    assert bad.tensors == [] and [code for _, code in step.errors] == ["INVALID_ARG"]
    (message, _), = step.errors
    assert message.startswith("input 'image_bytes': 2 of 3 image(s) cannot be used: item 0: not a readable image")
    assert "item 2: not a readable image" in message and "item 1" not in message


def test_the_cap_rules_are_pixel_caps(monkeypatch: pytest.MonkeyPatch) -> None:
    assert preprocessing.PIXEL_CAP_ENV == pixel_cap.PIXEL_CAP_ENV
    assert preprocessing.DEFAULT_MAX_IMAGE_PIXELS == pixel_cap.DEFAULT_MAX_IMAGE_PIXELS
    for text in ("", "  ", "1000", "64_000_000"):
        assert preprocessing.pixel_cap_from_environment({"DINO_MAX_IMAGE_PIXELS": text}) == \
            pixel_cap.parse_pixel_cap(text)
    for text in ("0", "-5", "lots"):
        with pytest.raises(ValueError, match="is not a positive whole number of pixels"):
            preprocessing.pixel_cap_from_environment({"DINO_MAX_IMAGE_PIXELS": text})
    data = io.BytesIO()
    Image.new("RGB", (50, 40)).save(data, "PNG")
    with pytest.raises(preprocessing.UnreadableImageError, match=r"50 x 40 = 2,000 pixels, over the cap of 1,999"):
        preprocessing.decode_rgb(data.getvalue(), 1999)
    assert preprocessing.decode_rgb(data.getvalue(), 2000).size == (50, 40)
