"""The `nodes` parameter in the compiled IR: nodes > 1 pretrains as one distributed job launched on the
cluster, otherwise in the pipeline's own step, and evaluation and export read whichever model was made.

kfp.local runs only the one-node side (the local pipeline tests): the launcher step needs a cluster API
and the runs claim, so its side is played apart (tests/containers/test_trainjob_launcher.py runs the
step in its container against an API stand-in, tests/containers/test_trainjob_nodes.py trains a TrainJob's
nodes in containers). Here: the IR a KFP backend executes.
"""

from pathlib import Path

import pytest
import yaml

from dino_model.cli.main import main


@pytest.fixture(scope="module")
def ir(tmp_path_factory) -> tuple[dict, dict]:
    out = tmp_path_factory.mktemp("ir") / "pipeline.yaml"
    assert main(["pipeline", "compile", "--output", str(out)]) == 0
    spec, platform = list(yaml.safe_load_all(Path(out).read_text()))
    return spec, platform


def _holder(spec: dict) -> dict:
    """The tasks of the group (the exit handler's) that holds the If/Else on `nodes`."""
    groups = [spec["root"]["dag"], *(c["dag"] for c in spec["components"].values() if "dag" in c)]
    (tasks,) = [g["tasks"] for g in groups if any(n.startswith("condition-branches") and "pretrain" in
                                                      str(spec["components"][t["componentRef"]["name"]])
                                                      for n, t in g["tasks"].items())]
    return tasks


def _branches(spec: dict) -> tuple[str, dict]:
    """The task holding the If/Else on `nodes`, and its component."""
    tasks = _holder(spec)
    (name,) = [n for n, t in tasks.items() if n.startswith("condition-branches")
               and "pretrain" in str(spec["components"][t["componentRef"]["name"]])]
    return name, spec["components"][tasks[name]["componentRef"]["name"]]


def test_nodes_defaults_to_one_and_the_operator_to_trainer_v2(ir) -> None:
    params = ir[0]["root"]["inputDefinitions"]["parameters"]
    assert params["nodes"]["defaultValue"] == 1 and params["nodes"]["parameterType"] == "NUMBER_INTEGER"
    assert params["training_operator"]["defaultValue"] == "trainer-v2"
    assert params["cluster_data_root"]["defaultValue"].startswith("/data/"), "the pods read the data claim at /data"
    assert "trainer-v2" in params["training_operator"]["description"]
    assert "training-operator-v1" in params["training_operator"]["description"]


def test_nodes_above_one_launch_the_cluster_job_else_the_step_trains(ir) -> None:
    spec, _ = ir
    _, branches = _branches(spec)
    tasks = branches["dag"]["tasks"]
    by_condition = {t["triggerPolicy"]["condition"]: spec["components"][t["componentRef"]["name"]]["dag"]["tasks"]
                    for t in tasks.values()}
    multi = "int(inputs.parameter_values['pipelinechannel--nodes']) > 1"
    assert set(by_condition) == {multi, f"!({multi})"}
    assert set(by_condition[multi]) == {"pretrain-on-cluster", "push-run-metrics"}  # the run's push, uncached
    assert set(by_condition[f"!({multi})"]) == {"pretrain", "gpu-placement", "resolve-served-weights",
                                                "push-run-metrics-2"}
    launcher = by_condition[multi]["pretrain-on-cluster"]["inputs"]["parameters"]
    assert launcher["operator"]["componentInputParameter"] == "pipelinechannel--training_operator"
    assert launcher["nodes"]["componentInputParameter"] == "pipelinechannel--nodes"
    assert launcher["nproc_per_node"]["componentInputParameter"] == "pipelinechannel--gpus"
    from components._image import IMAGE

    assert launcher["image"]["runtimeValue"]["constant"] == IMAGE, "the job trains the pipeline's own image"


def test_evaluation_and_export_read_the_model_of_either_branch(ir) -> None:
    spec, _ = ir
    name, branches = _branches(spec)
    (output,) = branches["dag"]["outputs"]["artifacts"].values()
    assert sorted(s["outputArtifactKey"] for s in output["artifactSelectors"]) == [
        "pipelinechannel--pretrain-model", "pipelinechannel--pretrain-on-cluster-model"]
    (key,) = branches["dag"]["outputs"]["artifacts"]
    for task in ("eval-knn", "eval-linear", "attention-maps"):
        model = _holder(spec)[task]["inputs"]["artifacts"]["model"]["taskOutputArtifact"]
        assert model == {"outputArtifactKey": key, "producerTask": name}, task
    assert "system.Model" in str(branches["outputDefinitions"])


def test_the_launcher_step_mounts_the_runs_claim_and_asks_little(ir) -> None:
    spec, platform = ir
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-pretrain-on-cluster"]
    assert [(m["constant"], m["mountPath"]) for m in k8s["pvcMount"]] == [("dino-runs", "/runs")]
    resources = spec["deploymentSpec"]["executors"]["exec-pretrain-on-cluster"]["container"]["resources"]
    assert "accelerator" not in resources and resources["cpuRequest"] == 1
