"""Triton model repositories: layout, both flavours' configs (parsed with Triton's own schema), lineage."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from dino_model.errors import ConfigError
from dino_model.export.lineage import code_revision, file_sha256
from dino_model.export.onnx import read_contract
from dino_model.triton.config import RepositoryOptions, config_parameters, flavour_of
from dino_model.triton.repository import PYTHON_MODEL, read_config, version_folders, write_model_repository


def test_gpu_repository(tmp_path: Path, tiny_onnx: Path) -> None:
    metrics = tmp_path / "linear.json"
    metrics.write_text(json.dumps({"metrics": {"linear_top1": 71.5}}))
    opts = RepositoryOptions(flavour="gpu", keep_versions=2, tensorrt=True, max_batch_size=32,
                             preferred_batch_sizes=[4, 16])
    result = write_model_repository(tiny_onnx, tmp_path / "repo", opts,
                                    lineage={"metrics": json.dumps({"linear_top1": 71.5})})
    model_dir = tmp_path / "repo" / "dino"
    assert result["version"] == 1 and sorted(p.name for p in model_dir.iterdir()) == ["1", "config.pbtxt"]
    assert sorted(p.name for p in (model_dir / "1").iterdir()) == ["drift.npz", "model.onnx"]
    assert file_sha256(model_dir / "1" / "model.onnx") == file_sha256(tiny_onnx)

    config = read_config(model_dir)  # parsed by protobuf against Triton's model_config.proto
    assert config["platform"] == "onnxruntime_onnx" and flavour_of(config) == "gpu"
    assert config["max_batch_size"] == 32
    assert config["input"] == [{"name": "images", "data_type": "TYPE_FP32", "dims": ["3", "32", "32"]}]
    assert [(o["name"], o["dims"]) for o in config["output"]] == [("embedding", ["64"]),
                                                                  ("patch_tokens", ["64", "64"])]
    assert config["instance_group"] == [{"count": 1, "kind": "KIND_GPU"}]
    assert config["dynamic_batching"] == {"preferred_batch_size": [4, 16], "max_queue_delay_microseconds": "100"}
    assert config["version_policy"] == {"latest": {"num_versions": 2}}
    (trt,) = config["optimization"]["execution_accelerators"]["gpu_execution_accelerator"]
    assert trt["name"] == "tensorrt" and trt["parameters"]["precision_mode"] == "FP16"
    assert trt["parameters"]["trt_profile_max_shapes"] == "images:32x3x32x32"
    assert [(w["batch_size"], w["inputs"]["images"]["zero_data"]) for w in config["model_warmup"]] == [(1, True),
                                                                                                      (16, True)]
    params = config_parameters(config)
    assert params["data_version"] == read_contract(tiny_onnx).lineage["data_version"] != ""
    assert params["code_revision"] == code_revision()
    assert json.loads(params["metrics"]) == {"linear_top1": 71.5}
    assert params["onnx_sha256"] == file_sha256(tiny_onnx)
    assert (params["dino.image_size"], params["dino.mean"]) == ("32", "[0.485, 0.456, 0.406]")


def test_cpu_repository_runs_the_same_file_in_the_python_backend(tmp_path: Path, tiny_onnx: Path) -> None:
    write_model_repository(tiny_onnx, tmp_path, RepositoryOptions(flavour="cpu", instance_count=1, intra_op_threads=2))
    model_dir = tmp_path / "dino"
    config = read_config(model_dir)
    assert config["backend"] == "python" and "platform" not in config and flavour_of(config) == "cpu"
    assert config["instance_group"] == [{"count": 1, "kind": "KIND_CPU"}]
    assert "dynamic_batching" in config and config_parameters(config)["intra_op_threads"] == "2"
    assert sorted(p.name for p in (model_dir / "1").iterdir()) == ["drift.npz", "model.onnx", "model.py"]
    assert (model_dir / "1" / "model.py").read_text() == PYTHON_MODEL.read_text()


def test_gpu_flavour_can_run_on_cpus(tmp_path: Path, tiny_onnx: Path) -> None:
    """NVIDIA's image on a cluster without GPUs: the onnxruntime backend with KIND_CPU instances."""
    write_model_repository(tiny_onnx, tmp_path, RepositoryOptions(flavour="gpu", instance_kind="cpu", instance_count=2))
    config = read_config(tmp_path / "dino")
    assert config["platform"] == "onnxruntime_onnx" and config["instance_group"] == [{"count": 2, "kind": "KIND_CPU"}]


def test_python_backend_model_is_self_contained() -> None:
    """The Triton stub imports model.py in its own process: numpy, onnxruntime and the stdlib only."""
    tree = ast.parse(PYTHON_MODEL.read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    stdlib = {"fcntl", "gc", "json", "math", "os", "pathlib", "tempfile"}
    assert imported == stdlib | {"numpy", "onnxruntime", "triton_python_backend_utils"}


def test_versions_are_added_never_overwritten(tmp_path: Path, tiny_onnx: Path) -> None:
    opts = RepositoryOptions(flavour="cpu")
    write_model_repository(tiny_onnx, tmp_path, opts)
    write_model_repository(tiny_onnx, tmp_path, opts)
    assert version_folders(tmp_path / "dino") == [1, 2]
    with pytest.raises(ConfigError, match="already exists"):
        write_model_repository(tiny_onnx, tmp_path, opts, version=2)
    (tmp_path / "dino" / "07").mkdir()  # Triton ignores versions with a leading zero
    assert version_folders(tmp_path / "dino") == [1, 2]
    assert not [p for p in (tmp_path / "dino").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(("options", "message"), [
    ({"preferred_batch_sizes": [128]}, r"preferred batch sizes \[128\]"),
    ({"flavour": "cpu", "tensorrt": True}, "TensorRT accelerator needs the gpu flavour"),
    ({"flavour": "tpu"}, "flavour 'tpu' is not one of gpu, cpu"),
    ({"max_batch_size": 0}, "max_batch_size=0 must be >= 1"),
    ({"flavour": "cpu", "instance_kind": "gpu"}, "runs on CPUs only"),
    ({"instance_kind": "cpu", "tensorrt": True}, "TensorRT accelerator needs the gpu flavour"),
])
def test_bad_options_are_refused(tmp_path: Path, tiny_onnx: Path, options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        write_model_repository(tiny_onnx, tmp_path, RepositoryOptions(**options))
    assert not (tmp_path / "dino").exists()


def test_cli_triton_repo(tmp_path: Path, tiny_onnx: Path, capsys: pytest.CaptureFixture, run_cli) -> None:
    code = run_cli(["triton-repo", "--onnx", str(tiny_onnx), "--repository", str(tmp_path), "--flavour", "cpu",
                 "--model-name", "digits", "--data-version", "override.dir"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["model"] == "digits" and result["version"] == 1
    config = read_config(tmp_path / "digits")
    assert config["name"] == "digits" and config_parameters(config)["data_version"] == "override.dir"
