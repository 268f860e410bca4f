"""The compiled IR: components, parameters, GPU requests, tolerations and caching, read back with yaml/kfp."""

from pathlib import Path

import pytest
import yaml

from dino_model.cli.main import main
from dino_model.errors import ConfigError, PipelineError
from pipelines.submit import check_cron, parse_params, submit


@pytest.fixture(scope="module")
def ir(tmp_path_factory) -> tuple[dict, dict, Path]:
    out = tmp_path_factory.mktemp("ir") / "pipeline.yaml"
    assert main(["pipeline", "compile", "--output", str(out)]) == 0
    spec, platform = list(yaml.safe_load_all(out.read_text()))
    return spec, platform, out


def test_components_and_parameters(ir):
    spec, _, _ = ir
    components = set(spec["components"])
    for name in ("comp-resolve-data-version", "comp-pretrain", "comp-eval-knn", "comp-eval-linear",
                 "comp-attention-maps", "comp-quality-gate", "comp-export-onnx", "comp-deploy-to-triton"):
        assert name in components, name
    params = spec["root"]["inputDefinitions"]["parameters"]
    for name in ("data_version", "gpus", "min_knn_top1", "triton_url", "config_yaml", "require_not_worse"):
        assert name in params, name
    assert params["gpus"]["parameterType"] == "NUMBER_INTEGER"


def test_caching_and_data_md5_flow(ir):
    spec, _, _ = ir
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["resolve-data-version"]["cachingOptions"] == {}  # enableCache absent = disabled
    assert tasks["pretrain"]["cachingOptions"]["enableCache"] is True
    assert tasks["quality-gate"]["cachingOptions"] == {}
    md5_input = tasks["pretrain"]["inputs"]["parameters"]["data_md5"]["taskOutputParameter"]
    assert md5_input == {"outputParameterKey": "Output", "producerTask": "resolve-data-version"}


def _condition(spec: dict, needle: str) -> str:
    (name,) = [n for n, t in spec["root"]["dag"]["tasks"].items()
               if needle in t.get("triggerPolicy", {}).get("condition", "")]
    return name


def test_gate_guards_export_and_deploy(ir):
    spec, _, _ = ir
    inner = spec["components"][f"comp-{_condition(spec, 'deploy')}"]["dag"]["tasks"]
    assert {"export-onnx", "deploy-to-triton"} <= set(inner)


def test_davis_runs_only_when_a_davis_set_is_given(ir):
    spec, _, _ = ir
    inner = spec["components"][f"comp-{_condition(spec, 'davis_root')}"]["dag"]["tasks"]
    assert set(inner) == {"eval-davis"}


def test_gpu_request_toleration_and_node_selector(ir):
    spec, platform, _ = ir
    resources = spec["deploymentSpec"]["executors"]["exec-pretrain"]["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert "gpus" in str(resources["accelerator"]["resourceCount"])
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert k8s["exec-pretrain"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert k8s["exec-pretrain"]["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
    assert k8s["exec-pretrain"]["emptyDirMounts"][0]["mountPath"] == "/dev/shm"
    assert k8s["exec-resolve-data-version"]["secretAsEnv"][0]["secretName"] == "dvc-remote-credentials"


def test_every_component_runs_the_project_image(ir):
    from components._image import IMAGE

    spec, _, _ = ir
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {IMAGE}


def test_ir_loads_back_with_the_kfp_sdk(ir):
    from kfp.components import load_component_from_file

    _, _, path = ir
    loaded = load_component_from_file(str(path))
    assert loaded.name == "dino-training"
    assert "min_knn_top1" in loaded.component_spec.inputs


def test_params_and_cron():
    assert parse_params(["epochs=5", "triton_url=a:8001", "overrides=[\"train.epochs=2\"]"]) == {
        "epochs": 5, "triton_url": "a:8001", "overrides": ["train.epochs=2"]}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_params(["oops"])
    assert check_cron("0 0 2 * * *") == "0 0 2 * * *"
    with pytest.raises(ConfigError, match="six with seconds first"):
        check_cron("0 2 * * *")


def test_unreachable_kfp_host_is_a_clear_error(free_port):
    with pytest.raises(PipelineError, match=f"127.0.0.1:{free_port}"):
        submit(f"http://127.0.0.1:{free_port}", params={})
