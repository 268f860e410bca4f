"""The `cpu` flavour's instances and onnxruntime threads follow the CPUs, and its hot path stays exact.

Defaults: the config written by `triton-repo` gets one instance per usable CPU (at most 4) unless told
otherwise, and each instance's onnxruntime session takes the serving machine's usable CPUs shared out
among the instances (model.py, which repeats dino_model/runtime/cpus.py's rule: checked here on the
same cgroup files). The hot path (two reductions per request instead of four passes, no copy for a
single request, one finiteness pass per batch) must still refuse exactly what it refused before.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from dino_model.errors import ConfigError
from dino_model.runtime import cpus
from dino_model.triton import config as triton_config
from dino_model.triton.config import RepositoryOptions, config_parameters
from dino_model.triton.repository import CONFIG_FILE, PYTHON_MODEL, read_config, write_model_repository


def _stub_utils() -> types.ModuleType:
    pb = types.ModuleType("triton_python_backend_utils")
    pb.Logger = types.SimpleNamespace(log_info=lambda m: None, log_warn=lambda m: None, log_error=lambda m: None)
    pb.Tensor = lambda name, array: types.SimpleNamespace(name=name, array=array)
    pb.InferenceResponse = lambda output_tensors, error=None: types.SimpleNamespace(tensors=output_tensors, error=error)
    pb.TritonError = lambda message, code=None: types.SimpleNamespace(message=message)
    pb.get_input_tensor_by_name = lambda request, name: types.SimpleNamespace(as_numpy=lambda: request)
    return pb


@pytest.fixture
def backend(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _stub_utils())
    spec = importlib.util.spec_from_file_location("dino_python_backend_cpus", PYTHON_MODEL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("usable", "count"), [(1, 1), (2, 2), (3, 3), (16, 4)])
def test_cpu_flavour_gets_one_instance_per_usable_cpu(tmp_path: Path, tiny_onnx: Path,
                                                      monkeypatch: pytest.MonkeyPatch, usable: int, count: int) -> None:
    monkeypatch.setattr(triton_config, "usable_cpus", lambda: usable)
    write_model_repository(tiny_onnx, tmp_path, RepositoryOptions(flavour="cpu"))
    text = (tmp_path / "dino" / CONFIG_FILE).read_text()
    config = read_config(tmp_path / "dino")
    assert config["instance_group"] == [{"count": count, "kind": "KIND_CPU"}]
    assert f"count: {count}" in text and 'key: "intra_op_threads"' in text
    assert config_parameters(config)["intra_op_threads"] == "0"  # chosen by each instance where it runs


def test_explicit_counts_win_and_gpus_keep_one_instance(tmp_path: Path, tiny_onnx: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(triton_config, "usable_cpus", lambda: 8)
    write_model_repository(tiny_onnx, tmp_path / "a", RepositoryOptions(flavour="cpu", instance_count=1,
                                                                        intra_op_threads=3))
    config = read_config(tmp_path / "a" / "dino")
    assert config["instance_group"] == [{"count": 1, "kind": "KIND_CPU"}]
    assert config_parameters(config)["intra_op_threads"] == "3"
    write_model_repository(tiny_onnx, tmp_path / "b", RepositoryOptions(flavour="gpu"))
    assert read_config(tmp_path / "b" / "dino")["instance_group"] == [{"count": 1, "kind": "KIND_GPU"}]


@pytest.mark.parametrize("options", [{"instance_count": -1}, {"intra_op_threads": -2}])
def test_negative_counts_are_refused(options: dict) -> None:
    with pytest.raises(ConfigError, match="0 chooses from the CPUs"):
        RepositoryOptions(flavour="cpu", **options).validate()


@pytest.mark.parametrize("cpu_max", [None, "max 100000", "200000 100000", "150000 100000", "50000 100000", "x"])
@pytest.mark.parametrize("affinity", [1, 2, 64])
def test_backend_counts_cpus_as_the_package_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend,
                                                 cpu_max: str | None, affinity: int) -> None:
    if cpu_max is not None:
        (tmp_path / "cpu.max").write_text(cpu_max)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(affinity)))
    assert backend.cgroup_cpu_limit(tmp_path) == cpus.cgroup_cpu_limit(tmp_path)
    assert backend.usable_cpus(tmp_path) == cpus.usable_cpus(tmp_path)
    for instances in (1, 2, 3, 4):
        assert backend.intra_op_threads("0", instances, tmp_path) == cpus.default_threads(
            cpus.usable_cpus(tmp_path), instances)


def test_backend_threads_follow_the_quota_not_the_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       backend) -> None:
    """A pod limited to 2 CPUs on a 64-core node: 2 instances get 1 thread each, not onnxruntime's 64."""
    (tmp_path / "cpu.max").write_text("200000 100000")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    assert backend.intra_op_threads("", 2, tmp_path) == 1
    assert backend.intra_op_threads("0", 1, tmp_path) == 2
    assert backend.intra_op_threads("5", 2, tmp_path) == 5  # an explicit count is kept
    assert backend._instance_count({"instance_group": [{"count": 3, "kind": "KIND_CPU"}]}) == 3


def _spinning(options: ort.SessionOptions) -> str:
    try:
        return options.get_session_config_entry("session.intra_op.allow_spinning")
    except RuntimeError:  # not set: onnxruntime's default, spinning
        return "default"


@pytest.mark.parametrize(("instances", "threads", "spinning"), [(2, 1, "default"), (1, 2, "0")])
def test_initialize_gives_the_session_the_chosen_threads(tmp_path: Path, tiny_onnx: Path,
                                                          monkeypatch: pytest.MonkeyPatch, backend,
                                                          instances: int, threads: int, spinning: str) -> None:
    """2 usable CPUs: 2 instances of 1 thread, or 1 instance of 2 threads whose idle threads do not spin
    (measured: spinning pool threads tripled the server's CPU per tiny request)."""
    monkeypatch.setattr(triton_config, "usable_cpus", lambda: 2)
    write_model_repository(tiny_onnx, tmp_path, RepositoryOptions(flavour="cpu", instance_count=instances))
    seen = []
    real = ort.InferenceSession
    monkeypatch.setattr(backend.ort, "InferenceSession",
                        lambda path, options, providers: seen.append(
                            (options.intra_op_num_threads, _spinning(options))) or real(path, options,
                                                                                          providers=providers))
    monkeypatch.setattr(backend, "usable_cpus", lambda root=None: 2)
    model = backend.TritonPythonModel()
    config = read_config(tmp_path / "dino")
    model.initialize({"model_config": json.dumps(config), "model_repository": str(tmp_path / "dino"),
                      "model_version": "1", "model_name": "dino"})
    assert seen == [(threads, spinning)]
    model.finalize()


def test_hot_path_answers_good_requests_and_refuses_bad_ones_alone(tmp_path: Path, tiny_onnx: Path,
                                                                    backend) -> None:
    write_model_repository(tiny_onnx, tmp_path, RepositoryOptions(flavour="cpu", instance_count=1))
    model = backend.TritonPythonModel()
    config = read_config(tmp_path / "dino")
    model.initialize({"model_config": json.dumps(config), "model_repository": str(tmp_path / "dino"),
                      "model_version": "1", "model_name": "dino"})
    rng = np.random.default_rng(0)
    good = [rng.standard_normal((n, 3, 32, 32), dtype=np.float32) for n in (1, 3, 2)]
    nan, inf, huge = (good[0].copy() for _ in range(3))
    nan[0, 1, 2, 3], inf[0, 0, 0, 0], huge[0, 2, 1, 1] = np.nan, -np.inf, -2e4
    requests = [good[0], nan, good[1], inf, huge, good[0].astype(np.float64), good[2][:, :, :16], good[2]]
    responses = model.execute(requests)
    errors = [r.error.message if r.error is not None else None for r in responses]
    assert [e is None for e in errors] == [True, False, True, False, False, False, False, True]
    assert "NaN or infinite" in errors[1] and "NaN or infinite" in errors[3] and "out of range" in errors[4]
    assert "dtype float64" in errors[5] and "shape [2, 3, 16, 32]" in errors[6]
    session = ort.InferenceSession(str(tmp_path / "dino" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    for array, response in zip((good[0], good[1], good[2]), (responses[0], responses[2], responses[7]), strict=True):
        expected = session.run(None, {"images": array})
        assert [t.name for t in response.tensors] == ["embedding", "patch_tokens"]
        for tensor, want in zip(response.tensors, expected, strict=True):
            np.testing.assert_allclose(tensor.array, want, atol=1e-5)
    model.finalize()


def test_hot_path_refuses_non_finite_answers_per_request(tmp_path: Path, tiny_onnx: Path, backend) -> None:
    """A batch whose answers hold NaN for one request: that request alone is refused."""
    write_model_repository(tiny_onnx, tmp_path, RepositoryOptions(flavour="cpu", instance_count=1))
    model = backend.TritonPythonModel()
    config = read_config(tmp_path / "dino")
    model.initialize({"model_config": json.dumps(config), "model_repository": str(tmp_path / "dino"),
                      "model_version": "1", "model_name": "dino"})
    real = model.session

    class Poisoned:
        def run(self, names, feeds):
            outputs = real.run(names, feeds)
            outputs[0][1] = np.nan  # the second image's embedding
            return outputs

    model.session = Poisoned()
    images = np.zeros((1, 3, 32, 32), np.float32)
    responses = model.execute([images, images, images])
    assert [r.error is None for r in responses] == [True, False, True]
    assert "non-finite embeddings" in responses[1].error.message
    model.finalize()


def test_queue_delay_defaults_per_flavour(tmp_path: Path, tiny_onnx: Path) -> None:
    """cpu: no batching delay (a batch-1 request would wait for nothing); gpu: 100 us; an explicit value wins."""
    for name, opts, delay in (("cpu", RepositoryOptions(flavour="cpu"), 0),
                              ("gpu", RepositoryOptions(flavour="gpu"), 100),
                              ("cpu250", RepositoryOptions(flavour="cpu", max_queue_delay_us=250), 250)):
        write_model_repository(tiny_onnx, tmp_path / name, opts)
        batching = read_config(tmp_path / name / "dino")["dynamic_batching"]  # present: batching stays on
        assert int(batching.get("max_queue_delay_microseconds", 0)) == delay, name
    with pytest.raises(ConfigError, match="max_queue_delay_us=-1 must be >= 0"):
        RepositoryOptions(flavour="cpu", max_queue_delay_us=-1).validate()


@pytest.mark.parametrize("flavour", ["cpu", "gpu"])
def test_every_model_of_the_repository_gets_at_least_one_instance(tmp_path: Path, tiny_onnx: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   flavour: str) -> None:
    """instance_count 0 means "from the CPUs" for every Python step too, never a count of 0 in a config."""
    monkeypatch.setattr(triton_config, "usable_cpus", lambda: 2)
    write_model_repository(tiny_onnx, tmp_path, RepositoryOptions(flavour=flavour, image_preprocess="python"))
    configs = {p.parent.name: read_config(p.parent) for p in tmp_path.glob("*/config.pbtxt")}
    assert len(configs) > 1  # the model and its entry points
    for name, config in configs.items():
        for group in config.get("instance_group", []):
            assert int(group.get("count", 0)) >= 1, name
        batching = config.get("dynamic_batching")
        if batching is not None and flavour == "cpu" and name == "dino":
            assert int(batching.get("max_queue_delay_microseconds", 0)) == 0
    assert configs["dino"]["instance_group"][0]["count"] == (2 if flavour == "cpu" else 1)
