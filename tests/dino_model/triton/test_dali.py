"""The `gpu` flavour's DALI preprocessing, run on the CPU here, against the client's PIL preprocessing.

The bundled tritonserver has no DALI backend, so what is tested here is the pipeline itself (the one
serialized into `<model>_preprocess/1/model.dali`, built with device="cpu"), fed exactly what the
unpack step hands it (zero-padded rows), and the repository DALI's backend would load. DALI's cubic
filter is not PIL's: the pixels differ a little, and the embeddings of the test model stay within
dali.TOLERANCE of the client's. Without DALI installed (the `dali` extra) these tests skip.
"""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import types
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from dino_model.export.onnx import read_contract
from dino_model.serving.images import transform_for
from dino_model.triton import dali
from dino_model.triton.config import RepositoryOptions
from dino_model.triton.python_backend.preprocessing import decode_rgb, padded_rows
from dino_model.triton.repository import BACKEND_FILES, read_config, write_model_repository

pytestmark = pytest.mark.skipif(not dali.dali_available(), reason="NVIDIA DALI is not installed (extra `dali`)")


def _encoded(digits_root: Path) -> list[bytes]:
    """JPEG, PNG and WebP digits at mixed sizes (one smaller than the crop)."""
    sources = sorted((digits_root / "val").rglob("*.png"))[:9]
    sizes = [(40, 40), (97, 31), (17, 64), (300, 200), (24, 24), (55, 80), (64, 64), (33, 90), (128, 36)]
    items = []
    for i, (source, size) in enumerate(zip(sources, sizes, strict=True)):
        data = io.BytesIO()
        image = Image.open(source).convert("RGB").resize(size, Image.Resampling.BILINEAR)
        image.save(data, ["JPEG", "PNG", "WEBP"][i % 3])
        items.append(data.getvalue())
    return items


def _dali_pixels(contract, items: list[bytes]) -> np.ndarray:
    pipe = dali.build_pipeline(contract, batch_size=len(items), device="cpu", device_id=None, num_threads=1)
    pipe.build()
    pipe.feed_input(dali.ENCODED, list(padded_rows(items, 10**8)))  # the unpack step's rows, padding included
    (out,) = pipe.run()
    return np.stack([np.asarray(t) for t in out])


def test_the_dali_pipeline_matches_the_client_within_the_tolerance(tiny_onnx: Path, digits_root: Path) -> None:
    contract = read_contract(tiny_onnx)
    items = _encoded(digits_root)
    transform = transform_for(contract)
    pil = np.stack([transform(decode_rgb(data, 10**8)) for data in items])
    ours = _dali_pixels(contract, items)
    assert ours.shape == pil.shape == (len(items), 3, contract.image_size, contract.image_size)
    pixel_gap = float(np.abs(ours - pil).max())
    assert 0 < pixel_gap < 0.5  # close, not equal: another cubic filter (normalised units, ~0.23 per 1/255 * 60)
    session = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    (a,) = session.run(["embedding"], {"images": pil})
    (b,) = session.run(["embedding"], {"images": ours.astype(np.float32)})
    gap = float(np.abs(a - b).max())
    print(f"DALI vs PIL: pixels max |diff| {pixel_gap:.4f}, mean {float(np.abs(ours - pil).mean()):.5f}; "
          f"embedding max |diff| {gap:.5f}, min cosine {float((a * b).sum(1).min()):.6f}")
    assert gap <= dali.TOLERANCE


def test_a_gpu_repository_with_dali_serializes_the_pipeline(tmp_path: Path, tiny_onnx: Path) -> None:
    result = write_model_repository(tiny_onnx, tmp_path, RepositoryOptions(flavour="gpu", max_batch_size=16,
                                                                           preferred_batch_sizes=[8]))
    assert result["entry_points"] == ["dino_unpack", "dino_preprocess", "dino_drift", "dino_images",
                                      "dino_monitored"]
    preprocess = read_config(tmp_path / "dino_preprocess")
    assert preprocess["backend"] == "dali" and preprocess["instance_group"][0]["kind"] == "KIND_GPU"
    assert preprocess["input"] == [{"name": "encoded", "data_type": "TYPE_UINT8", "dims": ["-1"],
                                    "allow_ragged_batch": True}]
    assert [p.name for p in (tmp_path / "dino_preprocess" / "1").iterdir()] == ["model.dali"]
    assert (tmp_path / "dino_preprocess" / "1" / "model.dali").stat().st_size > 0
    unpack = read_config(tmp_path / "dino_unpack")
    assert unpack["backend"] == "python" and unpack["output"][0]["data_type"] == "TYPE_UINT8"
    steps = read_config(tmp_path / "dino_images")["ensemble_scheduling"]["step"]
    assert [s["model_name"] for s in steps] == ["dino_unpack", "dino_preprocess", "dino", "dino_drift"]
    assert read_config(tmp_path / "dino_images")["input"][0]["data_type"] == "TYPE_STRING"  # same clients
    # without DALI the same flavour falls back to the Python step, and the unpack step goes
    write_model_repository(tiny_onnx, tmp_path, RepositoryOptions(flavour="gpu", image_preprocess="python"))
    assert read_config(tmp_path / "dino_preprocess")["backend"] == "python"
    assert not (tmp_path / "dino_unpack").exists()


def test_the_unpack_step_names_bad_items_and_pads_good_ones(monkeypatch: pytest.MonkeyPatch, digits_root: Path
                                                             ) -> None:
    errors = []
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
    spec = importlib.util.spec_from_file_location("dino_unpack_under_test", BACKEND_FILES / "unpack_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    step = module.TritonPythonModel()
    config = {"input": [{"name": "image_bytes"}], "output": [{"name": "encoded"}],
              "parameters": {"embedding_model": {"string_value": "dino"}}}
    step.initialize({"model_config": json.dumps(config), "model_repository": "/nonexistent/dino_unpack"})
    good = _encoded(digits_root)[:2]
    ok, bad = step.execute([np.array(good, dtype=np.object_).reshape(-1, 1),
                            np.array([good[0], b"junk"], dtype=np.object_).reshape(-1, 1)])
    (rows,) = ok.tensors
    assert rows.array.dtype == np.uint8 and rows.array.shape == (2, max(map(len, good)))
    assert bytes(rows.array[0][: len(good[0])]) == good[0] and not rows.array[0][len(good[0]):].any()
    assert bad.tensors == [] and [code for _, code in errors] == ["INVALID_ARG"]
    assert errors[0][0].startswith("input 'image_bytes': 1 of 2 image(s) cannot be used: item 1: not a readable image")
