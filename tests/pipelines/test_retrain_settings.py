"""RetrainSettings from the environment: each bad entry is refused with its name, values parse as JSON."""

from __future__ import annotations

import pytest

from dino_model.errors import ConfigError, PipelineError
from pipelines.retrain_settings import RetryPolicy, settings_from_env


def test_entries_become_typed_settings() -> None:
    settings = settings_from_env({"DINO_PARAM_gpus": "0", "DINO_PARAM_overrides": '["train.epochs=2"]',
                                  "DINO_PARAM_config": "tiny", "KFP_NAMESPACE": "team-a",
                                  "DINO_PIPELINE": "dino-training@0.1.0", "DINO_IMAGE": "r/i:1",
                                  "DINO_RETRAIN_MAX_ATTEMPTS": "5", "DINO_RETRAIN_BACKOFF_S": "60", "OTHER": "x"})
    assert settings.params == {"gpus": 0, "overrides": ["train.epochs=2"], "config": "tiny"}
    assert (settings.namespace, settings.registered, settings.image) == ("team-a", "dino-training@0.1.0", "r/i:1")
    assert settings.retry == RetryPolicy(max_attempts=5, backoff_s=60.0)


def test_empty_entries_mean_not_set() -> None:
    settings = settings_from_env({"KFP_NAMESPACE": "", "DINO_PIPELINE": " ", "DINO_IMAGE": ""})
    assert (settings.namespace, settings.registered, settings.image, settings.params) == (None, None, None, {})
    assert settings.retry == RetryPolicy() and settings.experiment == "dino-mlops"


@pytest.mark.parametrize(("environ", "message"), [
    ({"DINO_PARAM_data_version": "abc"}, "data_version is set by the retraining check"),
    ({"DINO_PARAM_gpu": "1"}, "gpu: not a parameter of the training pipeline"),
    ({"DINO_PARAM_": "1"}, "no parameter name"),
    ({"DINO_PIPELINE": "dino-training"}, "must be NAME@VERSION"),
    ({"DINO_RETRAIN_MAX_ATTEMPTS": "three"}, "DINO_RETRAIN_MAX_ATTEMPTS='three' is not an integer"),
    ({"DINO_RETRAIN_MAX_ATTEMPTS": "0"}, "must be at least 1"),
    ({"DINO_RETRAIN_BACKOFF_S": "-1"}, "must not be negative"),
    ({"DINO_FLYWHEEL_TOLERANCE": "-0.5"}, "DINO_FLYWHEEL_TOLERANCE must be a number of points >= 0"),
    ({"DINO_FLYWHEEL_TOLERANCE": "one"}, "DINO_FLYWHEEL_TOLERANCE='one' is not a number"),
    ({"DINO_FLYWHEEL_OVERRIDES": "train.epochs=5 fast"}, "holds fast, not key=value"),
])
def test_bad_entries_are_named(environ: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_from_env(environ)


def test_backoff_doubles_per_attempt() -> None:
    retry = RetryPolicy(max_attempts=4, backoff_s=100.0)
    assert [retry.due_at(1000.0, n) for n in (1, 2, 3)] == [1100.0, 1200.0, 1400.0]


def test_a_compiled_pipeline_that_runs_another_image_is_refused(tmp_path, monkeypatch) -> None:
    """components/_image.py reads DINO_IMAGE once: compiling later for another image must not pass silently."""
    import components._image
    from pipelines.submit import compile_pipeline, compiled_images

    monkeypatch.setenv("DINO_IMAGE", components._image.IMAGE)  # restored afterwards
    assert compiled_images(compile_pipeline(tmp_path / "a.yaml", image=components._image.IMAGE)) == {
        components._image.IMAGE}
    with pytest.raises(PipelineError, match="not registry.example/other:9"):
        compile_pipeline(tmp_path / "b.yaml", image="registry.example/other:9")


def test_a_flywheel_run_continues_from_the_served_weights_after_the_runs_own_overrides() -> None:
    settings = settings_from_env({"DINO_PARAM_overrides": '["data.num_workers=8", "train.epochs=300"]'})
    params = settings.flywheel.params(settings.params)
    assert params == {"init_from_serving": True, "gate_tolerance": 1.0,
                      "overrides": ["data.num_workers=8", "train.epochs=300", "train.epochs=10",
                                    "optim.warmup_epochs=1", "optim.base_lr=0.00017",
                                    "loss.warmup_teacher_temp_epochs=0"]}
    assert settings.params == {"overrides": ["data.num_workers=8", "train.epochs=300"]}  # left as it was
    own = settings_from_env({"DINO_FLYWHEEL_OVERRIDES": "train.epochs=4 'optim.base_lr=0.0001'",
                             "DINO_FLYWHEEL_TOLERANCE": "2.5"}).flywheel
    assert own.params({}) == {"init_from_serving": True, "gate_tolerance": 2.5,
                              "overrides": ["train.epochs=4", "optim.base_lr=0.0001"]}
    assert settings_from_env({"DINO_FLYWHEEL_OVERRIDES": ""}).flywheel.params({})["overrides"] == []
