"""Configuration: defaults, YAML layering, overrides, and errors that name the key."""

import pytest

from dino_model.config import config_from_dict, load_config, load_config_text
from dino_model.errors import ConfigError


def test_defaults_are_the_official_code_defaults():
    cfg = load_config()
    assert (cfg.model.out_dim, cfg.loss.teacher_temp, cfg.loss.warmup_teacher_temp_epochs) == (65536, 0.04, 0)
    assert (cfg.optim.base_lr, cfg.optim.clip_grad, cfg.crops.local_crops_number) == (5e-4, 3.0, 8)


def test_packaged_file_then_override_wins():
    cfg = load_config("tiny", overrides=["train.epochs=3", "model.depth=1"])
    assert cfg.train.epochs == 3 and cfg.model.depth == 1 and cfg.model.patch_size == 4


def test_paper_config_has_teacher_temperature_warmup():
    cfg = load_config("paper_vit_small")
    assert (cfg.loss.teacher_temp, cfg.loss.warmup_teacher_temp_epochs, cfg.model.norm_last_layer) == (0.07, 30, False)


@pytest.mark.parametrize(
    "override,match",
    [
        ("train.epochz=3", "epochz"),
        ("train.epochs=many", "train.epochs"),
        ("model.arch=vit_huge", "model.arch"),
        ("train.precision=fp8", "train.precision"),
        ("crops.local_size=64", "crops.local_size"),
        ("crops.flip_p=1.5", "crops.flip_p"),
    ],
)
def test_bad_overrides_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("tiny", overrides=[override, "crops.global_size=32"])


def test_round_trip_through_dict_and_text():
    cfg = load_config("tiny")
    assert config_from_dict(cfg.to_dict()) == cfg
    assert load_config_text("train:\n  epochs: 17\n").train.epochs == 17


def test_unknown_config_name():
    with pytest.raises(ConfigError, match="no config file"):
        load_config("nope")
