"""The image entry point (`dino_images`) on a real tritonserver, called as a Triton user would call it.

Two clients hold no project code: a script importing only tritonclient and numpy, and one making the
raw gRPC call from Triton's own protos (grpc_service_pb2, shipped in tritonclient) without
tritonclient's InferenceServerClient. Both run in a separate, isolated interpreter, send JPEG bytes of
mixed sizes in one batch, and must get the embeddings `dino-mlops infer` computes (client-side
preprocessing, tensor input): the server's preprocessing step runs the client's own code, so the
pixels are equal and only onnxruntime's arithmetic on a different batch can differ (TOLERANCE).
Corrupt bytes fail their request with INVALID_ARG naming the item, and the server keeps serving.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dino_model.cli.main import main
from dino_model.errors import ServingError
from dino_model.serving.client import EmbeddingClient
from dino_model.serving.inference import embed_images

pytestmark = pytest.mark.triton

# |server preprocessing - client preprocessing| on the embedding: the pixels are bit-equal (same code);
# onnxruntime may round differently for another batch composition. Measured: 0 (see the docs).
TOLERANCE = 1e-5

TRITONCLIENT_SCRIPT = '''
import json, sys
import numpy as np
import tritonclient.grpc as grpcclient

url, model, out = sys.argv[1], sys.argv[2], sys.argv[3]
paths = sys.argv[4:]
data = np.array([open(p, "rb").read() for p in paths], dtype=np.object_).reshape(-1, 1)
client = grpcclient.InferenceServerClient(url=url)
request = grpcclient.InferInput("image_bytes", list(data.shape), "BYTES")
request.set_data_from_numpy(data)
result = client.infer(model, [request], outputs=[grpcclient.InferRequestedOutput("embedding")])
np.save(out, result.as_numpy("embedding"))
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
'''

RAW_GRPC_SCRIPT = '''
import json, struct, sys
import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

url, model, out = sys.argv[1], sys.argv[2], sys.argv[3]
items = [open(p, "rb").read() for p in sys.argv[4:]]
request = service_pb2.ModelInferRequest(model_name=model)
tensor = request.inputs.add(name="image_bytes", datatype="BYTES", shape=[len(items), 1])
request.outputs.add(name="embedding")
# Triton's raw BYTES layout: each element as a 4-byte little-endian length, then its bytes
request.raw_input_contents.append(b"".join(struct.pack("<I", len(b)) + b for b in items))
stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(url))
try:
    response = stub.ModelInfer(request, timeout=60)
except grpc.RpcError as exc:
    print(json.dumps({"code": exc.code().name, "details": exc.details()}))
    sys.exit(3)
(output,) = response.outputs
embedding = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(list(output.shape))
np.save(out, embedding)
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_onnx: Path, triton_tools):
    repository = triton_tools.write_cpu_repository(tiny_onnx, tmp_path_factory.mktemp("images-repo"))
    started = triton_tools.start(repository)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory: pytest.TempPathFactory, digits_root: Path) -> list[Path]:
    """JPEG, PNG and WebP files of digits at mixed sizes and aspect ratios (some below the crop size)."""
    folder = tmp_path_factory.mktemp("mixed")
    sources = sorted((digits_root / "val").rglob("*.png"))[:6]
    sizes = [(40, 40), (97, 31), (17, 64), (300, 200), (24, 24), (55, 80)]
    paths = []
    for i, (source, size) in enumerate(zip(sources, sizes, strict=True)):
        image = Image.open(source).convert("RGB").resize(size, Image.Resampling.BILINEAR)
        suffix, fmt = [(".jpg", "JPEG"), (".png", "PNG"), (".webp", "WEBP")][i % 3]
        paths.append(folder / f"{i}{suffix}")
        image.save(paths[-1], fmt)
    return paths


def _client_embeddings(server, paths: list[Path]) -> np.ndarray:
    """What `dino-mlops infer` answers: preprocessed here, sent as tensors, one batch."""
    return embed_images([str(p) for p in paths], EmbeddingClient(server.grpc_url), batch_size=64).embeddings


def _run_isolated(script: str, server, paths: list[Path], tmp_path: Path) -> subprocess.CompletedProcess:
    """`script` in an isolated interpreter (-I: no PYTHONPATH, no cwd on sys.path) outside the checkout."""
    (tmp_path / "client.py").write_text(script)
    return subprocess.run([sys.executable, "-I", "client.py", server.grpc_url, "dino_images", "out.npy",
                           *map(str, paths)], cwd=tmp_path, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("script", [TRITONCLIENT_SCRIPT, RAW_GRPC_SCRIPT], ids=["tritonclient", "raw-grpc"])
def test_a_client_without_project_code_gets_the_embeddings_of_infer(server, jpegs: list[Path], tmp_path: Path,
                                                                    script: str) -> None:
    done = _run_isolated(script, server, jpegs, tmp_path)
    assert done.returncode == 0, done.stderr
    imported = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert "dino_model" not in imported and "PIL" not in imported  # nothing of ours, no image library
    served = np.load(tmp_path / "out.npy")
    expected = _client_embeddings(server, jpegs)
    assert served.shape == expected.shape == (len(jpegs), 64)
    gap = float(np.abs(served - expected).max())
    print(f"image bytes through dino_images vs `dino-mlops infer`: max |diff| {gap:.3g}")
    assert gap <= TOLERANCE
    assert np.allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)


def test_infer_server_preprocess_uses_the_entry_point(server, jpegs: list[Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    here, there = tmp_path / "client.npz", tmp_path / "server.npz"
    folder = jpegs[0].parent
    assert main(["infer", str(folder), "--url", server.grpc_url, "--output", str(here)]) == 0
    assert main(["infer", str(folder), "--url", server.grpc_url, "--output", str(there), "--server-preprocess",
                 "--batch-size", "4"]) == 0
    with np.load(here) as a, np.load(there) as b:
        assert list(a["paths"]) == list(b["paths"]) and len(b["paths"]) == len(jpegs)
        assert np.abs(a["embeddings"] - b["embeddings"]).max() <= TOLERANCE
    statistics = EmbeddingClient(server.grpc_url).raw.get_inference_statistics("dino_preprocess", as_json=True)
    assert int(statistics["model_stats"][0]["inference_stats"]["success"]["count"]) >= 2  # it went through the step


def _png_header(width: int, height: int) -> bytes:
    """A 74-byte PNG whose header declares width x height pixels (a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(1000))) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + data


def test_corrupt_bytes_fail_their_request_naming_the_item_and_the_server_keeps_serving(
        server, jpegs: list[Path], tmp_path: Path) -> None:
    client = EmbeddingClient(server.grpc_url)
    good = [p.read_bytes() for p in jpegs[:2]]
    truncated = jpegs[0].read_bytes()[: len(good[0]) // 2]
    with pytest.raises(ServingError) as raised:
        client.infer_encoded([good[0], b"not an image at all", truncated, good[1], _png_header(10_000, 10_000)])
    message = str(raised.value)
    assert "3 of 5 image(s) cannot be used" in message
    assert "item 1: not a readable image" in message and "item 2: not a readable image" in message
    assert "item 4: image too large to decode safely (10000 x 10000 = 100,000,000 pixels" in message
    assert "item 0" not in message and "item 3" not in message
    # the code a gRPC caller sees, through the raw stub
    (tmp_path / "bad.bin").write_bytes(b"\xff\xd8\xff garbage")
    done = _run_isolated(RAW_GRPC_SCRIPT, server, [tmp_path / "bad.bin"], tmp_path)
    assert done.returncode == 3, done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["code"] == "INVALID_ARGUMENT" and "item 0: not a readable image" in answer["details"]
    # and the instance still serves
    assert client.infer_encoded(good)["embedding"].shape == (2, 64)
    assert EmbeddingClient(server.grpc_url).raw.is_model_ready("dino_preprocess")


def test_infer_server_preprocess_skips_what_the_server_refuses(server, jpegs: list[Path], tmp_path: Path) -> None:
    """A file whose header reads but whose data is cut is refused by the server: skipped, the rest embedded.

    (Files named one by one: a folder scan already skips such a file before anything is sent.)
    """
    data = io.BytesIO()
    Image.open(jpegs[3]).save(data, "JPEG")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    files = [str(p) for p in (jpegs[0], cut, jpegs[1], jpegs[2])]
    result = embed_images(files, EmbeddingClient(server.grpc_url), server_preprocess=True)
    assert sorted(Path(p).name for p in result.paths) == sorted(p.name for p in jpegs[:3])
    assert [Path(s["path"]).name for s in result.skipped] == ["cut.jpg"]
    assert "refused by the server" in result.skipped[0]["reason"]


def test_the_entry_point_follows_a_deploy_with_no_failed_request(tiny_onnx: Path, jpegs: list[Path],
                                                                  tmp_path: Path, triton_tools) -> None:
    """`dino-mlops deploy` switches `dino` from 1 to 2 while clients send image bytes: every request is answered,
    the ensemble reaches version 2 afterwards, and version 1 is retired."""
    from dino_model.serving.rollout import deploy, ready_versions

    repository = triton_tools.write_cpu_repository(tiny_onnx, tmp_path / "repo")
    server = triton_tools.start(repository)
    try:
        client = EmbeddingClient(server.grpc_url)
        items = [p.read_bytes() for p in jpegs]
        before = client.infer_encoded(items)["embedding"]
        failures, answered, stop = [], [0], threading.Event()

        def send() -> None:
            own = EmbeddingClient(server.grpc_url)
            while not stop.is_set():
                try:
                    own.infer_encoded(items[:3])
                    answered[0] += 1
                except ServingError as exc:
                    failures.append(str(exc))

        senders = [threading.Thread(target=send) for _ in range(2)]
        for thread in senders:
            thread.start()
        try:
            result = deploy(tiny_onnx, repository, url=server.grpc_url)
        finally:
            stop.set()
            for thread in senders:
                thread.join()
        assert result["version"] == 2 and ready_versions(EmbeddingClient(server.grpc_url,
                                                                         headers=server.admin_headers)) == [2]
        assert failures == [] and answered[0] > 0
        stats = client.raw.get_inference_statistics("dino", "2", as_json=True)["model_stats"][0]
        done_before = int(stats["inference_stats"]["success"]["count"])
        assert np.abs(client.infer_encoded(items)["embedding"] - before).max() <= TOLERANCE  # the same file
        stats = client.raw.get_inference_statistics("dino", "2", as_json=True)["model_stats"][0]
        assert int(stats["inference_stats"]["success"]["count"]) == done_before + 1  # answered by version 2
    finally:
        server.stop()


def test_a_first_release_serves_the_entry_points(tiny_onnx: Path, jpegs: list[Path], tmp_path: Path,
                                                  start_server) -> None:
    """`release` onto an empty server writes version 1 with its entry points and loads them all."""
    from dino_model.serving.release import release

    repository = tmp_path / "empty"
    repository.mkdir()
    server = start_server(repository)
    result = release(tiny_onnx, repository, url=server.grpc_url, flavour="cpu")
    assert result["serving_versions"] == [1]
    client = EmbeddingClient(server.grpc_url)
    for name in ("dino_images", "dino_monitored", "dino_preprocess", "dino_drift"):
        assert client.raw.is_model_ready(name), name
    assert client.infer_encoded([p.read_bytes() for p in jpegs])["embedding"].shape == (len(jpegs), 64)


def test_a_server_asked_for_one_model_loads_its_entry_points(tiny_onnx: Path, tmp_path: Path) -> None:
    """`dino-mlops serve --model dino` loads what the repository holds beside it, and nothing of other models."""
    from dino_model.serving.server import TritonServer
    from dino_model.triton.config import RepositoryOptions
    from dino_model.triton.repository import write_model_repository

    write_model_repository(tiny_onnx, tmp_path, RepositoryOptions(flavour="cpu"))
    write_model_repository(tiny_onnx, tmp_path, RepositoryOptions(flavour="cpu", model_name="other"))
    loaded = [arg for arg in TritonServer(tmp_path, models=["dino"], admin_key="k" * 32).command(None)
              if arg.startswith("--load-model=")]
    assert loaded == [f"--load-model={name}" for name in
                      ("dino", "dino_preprocess", "dino_drift", "dino_images", "dino_monitored")]
