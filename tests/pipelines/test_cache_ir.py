"""Caching that hits, read from the compiled IR: a repeated run with the same data, config and image reuses
pretraining and every evaluation, and no task that may cache takes a per-run value or a fresh artifact.

No `from __future__ import annotations` here: KFP reads the components' annotations as types."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kfp import compiler, dsl
from kfp.dsl import Dataset, Input, Output

from pipelines.cache_keys import Run, cache_keys, reused

REPO = Path(__file__).resolve().parents[2]
MD5 = "0123456789abcdef0123456789abcdef.dir"
NEVER_CACHED = {"resolve-data-version", "resolve-served-weights", "quality-gate", "deploy-to-triton",
                "report-run-status", "push-run-metrics"}
REUSED = {"pretrain", "pretrain-on-cluster", "eval-knn", "eval-linear", "attention-maps", "eval-davis",
          "eval-retrieval", "eval-copydetection", "export-onnx", "gpu-placement"}


def _compile(out: Path, image: str | None = None) -> dict:
    """The pipeline compiled in a fresh interpreter (the image is read when components are imported)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if image:
        env["DINO_IMAGE"] = image
    code = "import sys; from pipelines.submit import compile_pipeline; compile_pipeline(sys.argv[1])"
    subprocess.run([sys.executable, "-c", code, str(out)], env=env, check=True, cwd=REPO, capture_output=True)
    return next(yaml.safe_load_all(out.read_text()))


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> dict:
    return _compile(tmp_path_factory.mktemp("ir") / "a.yaml")


def _run(run_id: str, *, md5: str = MD5, served: tuple[str, str] = ("", ""), **arguments) -> Run:
    reference = f'{{"md5":"{md5}","remote_url":"s3://data/dvc"}}'
    return Run(run_id, arguments, {"resolve-data-version": {"md5": md5, "git_rev": "abc", "reference": reference},
                                   "resolve-served-weights": {"path": served[0], "sha256": served[1]},
                                   "quality-gate": {"Output": "deploy"}})


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1].rstrip("-0123456789") if path.rsplit("-", 1)[-1].isdigit() \
        else path.rsplit("/", 1)[-1]


def test_no_task_that_may_cache_takes_a_per_run_value_or_a_fresh_artifact(spec):
    keys = cache_keys(spec, _run("run-1"))
    cached = {_name(p) for p, k in keys.items() if k.key is not None}
    assert cached == REUSED
    assert {_name(p) for p, k in keys.items() if k.key is None} == NEVER_CACHED
    offenders = {p: k.per_run_inputs for p, k in keys.items() if k.key is not None and k.per_run_inputs}
    assert not offenders, f"tasks that may cache but take per-run values: {offenders}"
    hits = reused(spec, _run("run-1"), _run("run-2"))
    assert all(hits.values()), f"a repeated run with the same data and config misses: {hits}"


def test_a_repeated_compile_reuses_pretraining_and_evaluation_and_new_data_or_image_does_not(spec, tmp_path):
    again = _compile(tmp_path / "b.yaml")
    first, second = cache_keys(spec, _run("run-1")), cache_keys(again, _run("run-2"))
    for path, key in first.items():
        if key.key is not None:
            assert second[path].key == key.key, path
    new_data = reused(spec, _run("run-1"), _run("run-2", md5="f" * 32 + ".dir"))
    assert {_name(p) for p, hit in new_data.items() if hit} == {"gpu-placement"}
    new_config = reused(spec, _run("run-1"), _run("run-2", overrides=["train.epochs=5"]))
    by_name = {_name(p): hit for p, hit in new_config.items()}
    assert not by_name["pretrain"] and not by_name["pretrain-on-cluster"] and by_name["gpu-placement"]
    other_image = cache_keys(_compile(tmp_path / "c.yaml", image="registry.example/dino:other"), _run("run-2"))
    assert all(other_image[p].key != k.key for p, k in first.items() if k.key is not None)


def test_a_newly_served_model_retrains_from_it_and_the_same_one_reuses_pretraining(spec):
    """init_from_serving: the served weights' sha256 is in pretraining's key (as a string, not an artifact)."""
    weights = ("/models/repository/dino/3/backbone.safetensors", "a" * 64)
    same = reused(spec, _run("run-1", served=weights, init_from_serving=True),
                  _run("run-2", served=weights, init_from_serving=True))
    assert all(same.values()), same
    newer = reused(spec, _run("run-1", served=weights, init_from_serving=True),
                   _run("run-2", served=(weights[0].replace("/3/", "/4/"), "b" * 64), init_from_serving=True))
    by_name = {_name(p): hit for p, hit in newer.items()}
    assert not by_name["pretrain"] and by_name["pretrain-on-cluster"] and by_name["gpu-placement"]


def test_the_analysis_flags_a_run_id_or_an_uncached_artifact_in_a_cached_step(tmp_path):
    @dsl.component(base_image="python:3.11")
    def make(out: Output[Dataset]) -> None:
        Path(out.path).write_text("x")

    @dsl.component(base_image="python:3.11")
    def train(data: Input[Dataset], run_id: str) -> str:
        return run_id

    @dsl.pipeline(name="bad")
    def bad() -> None:
        made = make().set_caching_options(enable_caching=False)
        train(data=made.outputs["out"], run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)

    out = tmp_path / "bad.yaml"
    compiler.Compiler().compile(bad, str(out))
    spec = yaml.safe_load(out.read_text())
    keys = cache_keys(spec, Run("run-1"))
    assert keys["train"].per_run_inputs == ("data", "run_id")
    assert reused(spec, Run("run-1"), Run("run-2")) == {"train": False}
