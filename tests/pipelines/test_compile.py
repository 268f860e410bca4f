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


def test_every_pipeline_parameter_is_described_for_the_ui(ir):
    spec, _, _ = ir
    params = spec["root"]["inputDefinitions"]["parameters"]
    undescribed = [name for name, p in params.items() if len(p.get("description", "")) < 15]
    assert not undescribed, f"parameters without a description: {undescribed}"
    assert params["config"]["defaultValue"] == "paper_vit_small"
    assert "repo_root" not in params and "data_repo" in params and "pushgateway" in params


def _tasks(spec: dict, dag: dict | None = None) -> dict[str, dict]:
    """Every task of the pipeline, those in groups (exit handler, conditions) included, by name."""
    found = {}
    for name, task in (dag or spec["root"]["dag"])["tasks"].items():
        found[name] = task
        component = spec["components"][task["componentRef"]["name"]]
        if "dag" in component:
            found |= _tasks(spec, component["dag"])
    return found


def test_caching_and_the_data_reference_flow(ir):
    spec, _, _ = ir
    tasks = _tasks(spec)
    assert tasks["resolve-data-version"]["cachingOptions"] == {}  # enableCache absent = disabled
    assert tasks["quality-gate"]["cachingOptions"] == {}
    pretrain, branches = _nested(spec, "pretrain")  # in the one-node branch of `nodes`
    assert pretrain["cachingOptions"]["enableCache"] is True
    ref_input = _source(pretrain, branches, "data_ref")
    assert ref_input == {"outputParameterKey": "reference", "producerTask": "resolve-data-version"}
    assert "run_id" not in pretrain["inputs"]["parameters"] and "artifacts" not in pretrain["inputs"]
    data_outputs = spec["components"]["comp-resolve-data-version"]["outputDefinitions"]
    assert "artifacts" not in data_outputs and set(data_outputs["parameters"]) == {"md5", "git_rev", "reference"}


def test_the_exit_handler_records_how_every_run_ends(ir):
    spec, _, _ = ir
    root = spec["root"]["dag"]["tasks"]
    assert set(root) == {"exit-handler-1", "report-run-status"}
    status = root["report-run-status"]
    assert status["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert status["dependentTasks"] == ["exit-handler-1"] and "taskFinalStatus" in str(status["inputs"])
    outputs = spec["components"]["comp-report-run-status"]["outputDefinitions"]["artifacts"]
    assert outputs["summary"]["artifactType"]["schemaTitle"] == "system.Markdown"


def test_transient_steps_retry_with_backoff_and_every_task_has_a_display_name(ir):
    spec, _, _ = ir
    tasks = {n: t for n, t in _tasks(spec).items() if not n.startswith(("condition-", "exit-handler-"))}
    retried = {n for n, t in tasks.items() if t.get("retryPolicy", {}).get("maxRetryCount", 0) > 0}
    assert {"resolve-data-version", "deploy-to-triton", "quality-gate", "report-run-status", "push-run-metrics"} \
        <= retried
    assert "pretrain" not in retried  # a failed training is not retried blindly
    for name in retried:
        policy = tasks[name]["retryPolicy"]
        assert policy["backoffDuration"] == "30s" and policy["backoffFactor"] == 2.0, name
    unnamed = [n for n, t in tasks.items() if t["taskInfo"]["name"] == n]
    assert not unnamed, f"tasks without a display name: {unnamed}"


def test_every_step_requests_cpu_memory_and_disk(ir):
    spec, platform, _ = ir
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for label, executor in spec["deploymentSpec"]["executors"].items():
        resources = executor["container"].get("resources", {})
        assert resources.get("cpuRequest") and resources.get("memoryRequest"), label
        volumes = k8s.get(label, {})
        disk = [m for m in volumes.get("emptyDirMounts", []) if m.get("sizeLimit")] + \
            volumes.get("genericEphemeralVolume", [])
        assert disk, f"{label} has no sized scratch volume"
    for reader in ("exec-pretrain", "exec-eval-knn", "exec-eval-linear", "exec-attention-maps", "exec-export-onnx"):
        (volume,) = k8s[reader]["genericEphemeralVolume"]
        assert volume["mountPath"] == "/data-scratch" and volume["size"] == "200Gi"
        assert {s["secretName"] for s in k8s[reader]["secretAsEnv"]} >= {"dvc-remote-credentials"}


def _nested(spec: dict, name: str) -> tuple[dict, list[dict]]:
    """The task `name` anywhere in the pipeline, and the condition tasks (outermost first) that hold it."""
    def walk(tasks: dict, chain: list[dict]) -> tuple[dict, list[dict]] | None:
        for task_name, task in tasks.items():
            if task_name == name:
                return task, chain
            inner = spec["components"].get(task["componentRef"]["name"], {}).get("dag")
            if inner and (found := walk(inner["tasks"], [*chain, task])):
                return found
        return None

    found = walk(spec["root"]["dag"]["tasks"], [])
    assert found, f"no task {name}"
    return found


def _source(task: dict, chain: list[dict], parameter: str) -> dict:
    """Where a task's parameter comes from, followed out through the condition tasks that pass it in."""
    ref = task["inputs"]["parameters"][parameter]
    for holder in reversed(chain):
        key = ref.get("componentInputParameter")
        if key not in holder["inputs"].get("parameters", {}):
            break
        ref = holder["inputs"]["parameters"][key]
    return ref.get("taskOutputParameter", ref)


def _condition(spec: dict, needle: str) -> str:
    (name,) = [n for n, t in _tasks(spec).items() if needle in t.get("triggerPolicy", {}).get("condition", "")]
    return name


def test_gate_guards_export_and_deploy(ir):
    spec, _, _ = ir
    inner = spec["components"][f"comp-{_condition(spec, 'deploy')}"]["dag"]["tasks"]
    assert {"export-onnx", "deploy-to-triton"} <= set(inner)


def test_davis_runs_only_when_a_davis_set_is_given(ir):
    spec, _, _ = ir
    inner = spec["components"][f"comp-{_condition(spec, 'davis_root')}"]["dag"]["tasks"]
    assert {n for n in inner if n.startswith("eval-")} == {"eval-davis"}


def test_retrieval_and_copy_detection_run_only_when_asked_for(ir):
    spec, _, _ = ir
    assert spec["root"]["inputDefinitions"]["parameters"]["search_evals"]["defaultValue"] is False
    name = _condition(spec, "search_evals")
    assert _tasks(spec)[name]["triggerPolicy"]["condition"].endswith("== true")
    inner = spec["components"][f"comp-{name}"]["dag"]["tasks"]
    assert {"eval-retrieval", "eval-copydetection"} == {n for n in inner if n.startswith("eval-")}
    for component in ("comp-eval-retrieval", "comp-eval-copydetection"):
        outputs = spec["components"][component]["outputDefinitions"]["artifacts"]
        assert outputs["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"


def test_gpu_request_toleration_and_node_selector_only_when_gpus_are_asked_for(ir):
    from dino_model.train.placement import gpu_node_selector, gpu_tolerations

    spec, platform, _ = ir
    resources = spec["deploymentSpec"]["executors"]["exec-pretrain"]["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert "gpus" in str(resources["accelerator"]["resourceCount"])
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-pretrain"]
    assert k8s["emptyDirMounts"][0]["mountPath"] == "/dev/shm"
    # selector and tolerations come from the placement step at run time, not fixed at compile time
    assert "gpu-placement" in str(k8s["nodeSelector"]) and "node_selector" in str(k8s["nodeSelector"])
    assert "gpu-placement" in str(k8s["tolerations"]) and "tolerations" in str(k8s["tolerations"])
    assert gpu_node_selector(0) == {} and gpu_tolerations(0) == []
    assert gpu_node_selector(2) == {"nvidia.com/gpu.present": "true"}
    assert gpu_tolerations(1) == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    secrets = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-resolve-data-version"]
    assert {s["secretName"] for s in secrets["secretAsEnv"]} == {"dvc-remote-credentials", "data-repo-credentials"}


def test_only_the_export_gets_the_lineage_signing_key(ir):
    """The export signs the lineage; the gate and the deploy step only verify it, with the public keys."""
    _, platform, _ = ir
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]

    def lineage_env(executor: str) -> set[str]:
        return {env["envVar"] for secret in executors[executor].get("secretAsEnv", [])
                if secret["secretName"] == "lineage-signing-key" for env in secret["keyToEnv"]}

    assert lineage_env("exec-export-onnx") == {"DINO_LINEAGE_SIGNING_KEY"}
    assert lineage_env("exec-quality-gate") == lineage_env("exec-deploy-to-triton") == {"DINO_LINEAGE_PUBLIC_KEYS"}
    assert all(not any(s.get("optional") for s in executors[e].get("secretAsEnv", [])
                       if s["secretName"] == "lineage-signing-key")
               for e in ("exec-export-onnx", "exec-quality-gate", "exec-deploy-to-triton"))


def test_the_gate_can_finish_a_killed_deploy_before_it_reads_the_bar(ir):
    """Like the deploy step, the gate gets Triton's claim and admin key, and is told the repository."""
    spec, platform, _ = ir
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    gate = executors["exec-quality-gate"]
    assert [m["mountPath"] for m in gate["pvcMount"]] == ["/models"]
    assert {e["envVar"] for s in gate["secretAsEnv"] for e in s["keyToEnv"]} >= {"TRITON_ADMIN_KEY"}
    assert "triton_repository" in spec["components"]["comp-quality-gate"]["inputDefinitions"]["parameters"]


def test_pretraining_starts_from_the_served_weights_by_path_and_sha256_read_from_the_claim(ir):
    """A never-cached step resolves the served weights (with the gate's claim and key); pretraining takes
    the path and sha256 as strings and mounts the claim alone, without the admin key."""
    spec, platform, _ = ir
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["init_from_serving"]["defaultValue"] is False and params["gate_tolerance"]["defaultValue"] == 0.0
    assert params["captured_subdir"]["defaultValue"] == "captured"
    pretrain, branches = _nested(spec, "pretrain")
    for name in ("path", "sha256"):
        source = _source(pretrain, branches, {"path": "init_weights", "sha256": "init_sha256"}[name])
        assert source == {"outputParameterKey": name, "producerTask": "resolve-served-weights"}
    assert _nested(spec, "resolve-served-weights")[0]["cachingOptions"] == {}
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    resolver, trainer = executors["exec-resolve-served-weights"], executors["exec-pretrain"]
    assert [m["mountPath"] for m in resolver["pvcMount"]] == ["/models"]
    assert {e["envVar"] for s in resolver["secretAsEnv"] for e in s["keyToEnv"]} >= {"TRITON_ADMIN_KEY"}
    assert "/models" in [m["mountPath"] for m in trainer["pvcMount"]]
    assert not any(e["envVar"] == "TRITON_ADMIN_KEY" for s in trainer.get("secretAsEnv", []) for e in s["keyToEnv"])
    gate = _tasks(spec)["quality-gate"]["inputs"]["parameters"]
    assert gate["tolerance"]["componentInputParameter"].endswith("gate_tolerance")


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


class RecordingClient:
    """Offline stand-in for kfp.Client (no KFP API server can run here): records what would be sent."""

    def __init__(self, pipelines: dict[str, list[str]] | None = None) -> None:
        self.pipelines = pipelines or {}
        self.calls: list[tuple[str, dict]] = []

    def list_pipelines(self, filter, namespace, page_size):
        import json

        (predicate,) = json.loads(filter)["predicates"]
        name = predicate["string_value"]
        found = [type("P", (), {"display_name": name, "pipeline_id": f"id-{name}"})] if name in self.pipelines else []
        return type("Page", (), {"pipelines": found})

    def upload_pipeline(self, path, pipeline_name, description, namespace):
        self.calls.append(("upload_pipeline", {"name": pipeline_name, "namespace": namespace, "path": path}))
        self.pipelines[pipeline_name] = []
        return type("P", (), {"pipeline_id": f"id-{pipeline_name}"})

    def upload_pipeline_version(self, path, pipeline_version_name, pipeline_id, description):
        assert "dino-training" in Path(path).read_text()  # the compiled IR is what gets uploaded
        self.calls.append(("upload_pipeline_version", {"version": pipeline_version_name, "pipeline_id": pipeline_id}))
        return type("V", (), {"pipeline_version_id": f"v-{pipeline_version_name}"})

    def list_pipeline_versions(self, pipeline_id, page_token, page_size):
        versions = [type("V", (), {"display_name": v, "pipeline_version_id": f"v-{v}"})
                    for v in self.pipelines[pipeline_id.removeprefix("id-")]]
        return type("Page", (), {"pipeline_versions": versions, "next_page_token": ""})

    def create_experiment(self, name, namespace):
        self.calls.append(("create_experiment", {"name": name, "namespace": namespace}))
        return type("E", (), {"experiment_id": "exp-1"})

    def run_pipeline(self, **kwargs):
        self.calls.append(("run_pipeline", kwargs))
        return type("R", (), {"run_id": "run-1"})


def test_upload_registers_a_version_and_submit_runs_it():
    from pipelines.submit import upload

    client = RecordingClient()
    made = upload("http://kfp", version="0.1.0", namespace="team-a", client=client)
    assert made["pipeline_version_id"] == "v-0.1.0"
    assert [c[0] for c in client.calls] == ["upload_pipeline", "upload_pipeline_version"]
    assert client.calls[0][1]["namespace"] == "team-a"
    client.pipelines["dino-training"] = ["0.1.0"]
    result = submit("http://kfp", params={"gpus": 8}, registered="dino-training@0.1.0", namespace="team-a",
                    client=client)
    assert result["run_id"] == "run-1"
    run = client.calls[-1][1]
    assert (run["pipeline_id"], run["version_id"], run["params"]) == ("id-dino-training", "v-0.1.0", {"gpus": 8})
    assert "pipeline_package_path" not in run
    with pytest.raises(PipelineError, match="has no version '9.9'"):
        submit("http://kfp", params={}, registered="dino-training@9.9", client=client)
    with pytest.raises(ConfigError, match="NAME@VERSION"):
        submit("http://kfp", params={}, registered="dino-training", client=client)
