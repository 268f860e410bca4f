"""Platform metrics: names, values and labels of each registry, and pushes that never raise."""

from __future__ import annotations

import logging
import math
import time

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dino_model.monitoring import metrics as m


def _samples(registry) -> dict[tuple[str, tuple], float]:
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


EPOCH = {"epoch": 3, "loss": 6.25, "lr": 5e-4, "momentum": 0.996, "teacher_temp": 0.04,
         "teacher_entropy": 2.5, "kl": 3.75, "collapsed": False, "images_per_s": 812.5, "steps": 40}


def test_training_registry_maps_the_loops_keys() -> None:
    got = _samples(m.training_registry(EPOCH, out_dim=65536))
    assert got == {
        ("dino_train_epoch", ()): 3.0,
        ("dino_train_loss", ()): 6.25,
        ("dino_train_learning_rate", ()): 5e-4,
        ("dino_train_teacher_momentum", ()): 0.996,
        ("dino_train_teacher_temperature", ()): 0.04,
        ("dino_train_teacher_entropy", ()): 2.5,
        ("dino_train_teacher_student_kl", ()): 3.75,
        ("dino_train_images_per_second", ()): 812.5,
        ("dino_train_collapsed", ()): 0.0,
        ("dino_train_loss_finite", ()): 1.0,
        ("dino_train_teacher_entropy_max", ()): pytest.approx(16 * math.log(2)),
    }


@pytest.mark.parametrize("loss", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_loss_sets_the_finite_gauge_to_zero(loss: float) -> None:
    got = _samples(m.training_registry({"loss": loss}))
    assert got[("dino_train_loss_finite", ())] == 0.0
    value = got[("dino_train_loss", ())]
    assert (math.isnan(value) and math.isnan(loss)) or value == loss


def test_entropy_max_needs_two_prototypes() -> None:
    with pytest.raises(ValueError, match="out_dim=1"):
        m.training_registry({"loss": 1.0}, out_dim=1)


def test_eval_registry_labels_each_score() -> None:
    got = _samples(m.eval_registry("knn", {"top1_k20": 0.71, "top5_k20": 0.93}, timestamp=1234.0))
    assert got == {
        ("dino_eval_metric", (("evaluation", "knn"), ("metric", "top1_k20"))): 0.71,
        ("dino_eval_metric", (("evaluation", "knn"), ("metric", "top5_k20"))): 0.93,
        ("dino_eval_timestamp_seconds", (("evaluation", "knn"),)): 1234.0,
    }


def test_deployment_registry() -> None:
    got = _samples(m.deployment_registry("dino_vit", 7, data_version="abc.dir", timestamp=99.0))
    assert got == {
        ("dino_deployed_model_version", (("model", "dino_vit"),)): 7.0,
        ("dino_deployment_timestamp_seconds", (("model", "dino_vit"),)): 99.0,
        ("dino_model_info", (("data_version", "abc.dir"), ("model", "dino_vit"), ("version", "7"))): 1.0,
    }


def test_deployment_rejects_a_non_numeric_version() -> None:
    with pytest.raises(ValueError, match="'latest'"):
        m.deployment_registry("dino_vit", "latest")


def test_empty_gateway_is_a_logged_no_op(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(m.GATEWAY_ENV, raising=False)
    with caplog.at_level(logging.INFO, logger=m.__name__):
        assert m.push_training_metrics(EPOCH, gateway="") is False
        assert m.push_training_metrics(EPOCH) is False  # None falls back to the unset variable
    assert "no Pushgateway configured" in caplog.text


def test_unreachable_gateway_warns_and_returns(caplog: pytest.LogCaptureFixture, free_port: int) -> None:
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger=m.__name__):
        ok = m.push_training_metrics(EPOCH, gateway=f"127.0.0.1:{free_port}", labels={"run": "r"})
        ok_eval = m.push_eval_metrics("knn", {"top1": 0.5}, gateway=f"127.0.0.1:{free_port}")
        ok_deploy = m.record_deployment("dino_vit", 1, gateway=f"127.0.0.1:{free_port}")
        ok_data = m.record_data_version("abc.dir", gateway=f"127.0.0.1:{free_port}")
    assert (ok, ok_eval, ok_deploy, ok_data) == (False, False, False, False)
    assert f"could not push dino-train metrics to the Pushgateway at 127.0.0.1:{free_port}" in caplog.text
    assert time.monotonic() - start < m.PUSH_TIMEOUT_S


def test_gateway_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(m.GATEWAY_ENV, " pushgateway:9091 ")
    assert m.resolve_gateway(None) == "pushgateway:9091"
    assert m.resolve_gateway("") == ""
