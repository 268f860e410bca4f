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
from dino_model.triton.repository import (
    BACKEND_FILES,
    DRIFT_MODEL,
    PREPROCESS_MODEL,
    PYTHON_MODEL,
    read_config,
    version_folders,
    write_model_repository,
)


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
    assert imported == {"json", "math", "os", "pathlib", "numpy", "onnxruntime", "triton_python_backend_utils"}


@pytest.mark.parametrize(("source", "allowed"), [
    (PREPROCESS_MODEL, {"importlib", "json", "sys", "pathlib", "triton_python_backend_utils"}),
    (BACKEND_FILES / "preprocessing.py", {"__future__", "io", "os", "dataclasses", "numpy", "PIL"}),
    (DRIFT_MODEL, {"fcntl", "gc", "importlib", "json", "os", "sys", "tempfile", "pathlib", "numpy",
                   "triton_python_backend_utils"}),
    (BACKEND_FILES / "versions.py", {"pathlib"}),
    (BACKEND_FILES / "capture_hook.py", {"os", "time", "dino_model"}),
    (BACKEND_FILES / "drift_share.py", {"json", "os", "tempfile", "time", "pathlib"}),
])
def test_the_entry_point_steps_are_self_contained(source: Path, allowed: set[str]) -> None:
    """The steps' stubs import their files from the version folder: no project code, nothing beyond numpy and PIL."""
    tree = ast.parse(source.read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported == allowed


def test_the_capture_hook_imports_project_code_only_when_capture_is_switched_on() -> None:
    """dino_model is imported inside open_sampler, after the switch: a step with capture off loads no project code."""
    tree = ast.parse((BACKEND_FILES / "capture_hook.py").read_text())
    top_level = {alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    (opener,) = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "open_sampler"]
    inside = {node.module for node in ast.walk(opener) if isinstance(node, ast.ImportFrom)}
    assert top_level == {"os", "time"} and inside == {"dino_model.capture"}


@pytest.mark.parametrize("flavour", ["cpu", "gpu"])
def test_the_entry_points_are_written_beside_the_model(tmp_path: Path, tiny_onnx: Path, flavour: str) -> None:
    result = write_model_repository(tiny_onnx, tmp_path, RepositoryOptions(flavour=flavour, max_batch_size=16,
                                                                                preferred_batch_sizes=[8],
                                                                                image_preprocess="python"))
    assert result["entry_points"] == ["dino_preprocess", "dino_drift", "dino_images", "dino_monitored"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["dino", *result["entry_points"]])
    images, monitored = read_config(tmp_path / "dino_images"), read_config(tmp_path / "dino_monitored")
    assert images["platform"] == monitored["platform"] == "ensemble"
    assert images["input"] == [{"name": "image_bytes", "data_type": "TYPE_STRING", "dims": ["1"]}]
    assert monitored["input"] == read_config(tmp_path / "dino")["input"]  # the model's own tensor input
    for config in (images, monitored):
        assert config["max_batch_size"] == 16
        assert [o["name"] for o in config["output"]] == ["embedding", "patch_tokens"]
        steps = config["ensemble_scheduling"]["step"]
        assert all(step["model_version"] == "-1" for step in steps)  # the latest ready version: follows a deploy
        assert [s["model_name"] for s in steps][-2:] == ["dino", "dino_drift"]
        assert steps[-1]["output_map"] == {"embedding": "embedding"}  # embeddings leave through the drift step
    assert [s["model_name"] for s in images["ensemble_scheduling"]["step"]] == ["dino_preprocess", "dino",
                                                                                 "dino_drift"]
    preprocess, drift = read_config(tmp_path / "dino_preprocess"), read_config(tmp_path / "dino_drift")
    assert preprocess["backend"] == drift["backend"] == "python"
    assert preprocess["instance_group"][0]["kind"] == drift["instance_group"][0]["kind"] == "KIND_CPU"
    assert drift["instance_group"][0]["count"] == 1  # one window per server
    params = config_parameters(preprocess)
    contract = read_contract(tiny_onnx)
    assert (int(params["image_size"]), int(params["resize_size"])) == (contract.image_size, contract.resize_size)
    assert json.loads(params["mean"]) == list(contract.mean) and json.loads(params["std"]) == list(contract.std)
    assert config_parameters(drift)["embedding_model"] == params["embedding_model"] == "dino"
    assert sorted(p.name for p in (tmp_path / "dino_preprocess" / "1").iterdir()) == [
        "capture_hook.py", "drift_share.py", "model.py", "preprocessing.py", "versions.py"]
    assert sorted(p.name for p in (tmp_path / "dino_drift" / "1").iterdir()) == [
        "capture_hook.py", "drift_share.py", "model.py", "versions.py"]
    assert (tmp_path / "dino_preprocess" / "1" / "model.py").read_bytes() == PREPROCESS_MODEL.read_bytes()
    assert (tmp_path / "dino_drift" / "1" / "model.py").read_bytes() == DRIFT_MODEL.read_bytes()
    assert list((tmp_path / "dino_images" / "1").iterdir()) == []


def test_rewriting_the_repository_replaces_the_steps_and_keeps_the_model_versions(tmp_path: Path,
                                                                                  tiny_onnx: Path) -> None:
    write_model_repository(tiny_onnx, tmp_path, RepositoryOptions(flavour="cpu"))
    (tmp_path / "dino_preprocess" / "1" / "model.py").write_text("an older step")
    write_model_repository(tiny_onnx, tmp_path, RepositoryOptions(flavour="cpu"))
    assert version_folders(tmp_path / "dino") == [1, 2] and version_folders(tmp_path / "dino_preprocess") == [1]
    assert (tmp_path / "dino_preprocess" / "1" / "model.py").read_bytes() == PREPROCESS_MODEL.read_bytes()
    assert not [p for p in (tmp_path / "dino_preprocess").iterdir() if p.name.startswith(".")]


def test_entry_points_can_be_left_out(tmp_path: Path, tiny_onnx: Path) -> None:
    result = write_model_repository(tiny_onnx, tmp_path, RepositoryOptions(flavour="cpu", entry_points=False))
    assert result["entry_points"] == [] and [p.name for p in tmp_path.iterdir()] == ["dino"]


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


def test_cli_triton_repo_capture_switches_capture_on_in_the_first_step(tmp_path: Path, tiny_onnx: Path,
                                                                       capsys: pytest.CaptureFixture,
                                                                       run_cli) -> None:
    """--capture writes capture_enabled "true" where the hook reads it (and in the drift step, which shares its
    window); without it the parameter is absent: capture is off."""
    import importlib.util

    from dino_model.triton import ensemble

    spec = importlib.util.spec_from_file_location("capture_hook_switch", BACKEND_FILES / "capture_hook.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    for flags, root in (([], tmp_path / "off"), (["--capture"], tmp_path / "on")):
        assert run_cli(["triton-repo", "--onnx", str(tiny_onnx), "--repository", str(root), "--flavour", "cpu",
                        *flags]) == 0
    capsys.readouterr()
    for name in ("dino_preprocess", "dino_drift"):
        on, off = read_config(tmp_path / "on" / name), read_config(tmp_path / "off" / name)
        assert config_parameters(on)["capture_enabled"] == "true" and "capture_enabled" not in config_parameters(off)
        assert hook.switched_on(on, env={}) and not hook.switched_on(off, env={})  # no DINO_CAPTURE_ENABLED
    on, off = (ensemble.unpack_config(RepositoryOptions(capture=c)) for c in (True, False))  # first step before DALI
    assert hook.switched_on(on, env={}) and not hook.switched_on(off, env={})
