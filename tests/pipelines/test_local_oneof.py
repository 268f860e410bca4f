"""kfp.local hands a step the artifact of whichever `dsl.If`/`dsl.Else` branch ran, as a KFP backend does
(pipelines/local_oneof.py), so the local pipeline runs with the model of its `nodes` branches joined."""

import pytest
from kfp import dsl, local
from kfp.dsl import Artifact, Input, Output

from pipelines.local_oneof import allow_artifact_oneof


@dsl.component(base_image="python:3.11")  # run by the SubprocessRunner: the image is never pulled
def make(text: str, out: Output[Artifact]) -> None:
    with open(out.path, "w") as fh:
        fh.write(text)


@dsl.component(base_image="python:3.11")  # run by the SubprocessRunner: the image is never pulled
def read(given: Input[Artifact]) -> str:
    with open(given.path) as fh:
        return fh.read()


@dsl.pipeline
def branches(nodes: int) -> str:
    with dsl.If(nodes > 1):
        many = make(text="made by the multi-node branch")
    with dsl.Else():
        one = make(text="made by the one-node branch")
    return read(given=dsl.OneOf(many.outputs["out"], one.outputs["out"])).output


@pytest.mark.parametrize(("nodes", "made_by"), [(1, "one-node"), (3, "multi-node")])
def test_the_artifact_of_the_branch_that_ran_reaches_the_next_step(tmp_path, nodes: int, made_by: str) -> None:
    allow_artifact_oneof()
    allow_artifact_oneof()  # idempotent
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path))
    assert branches(nodes=nodes).output == f"made by the {made_by} branch"
