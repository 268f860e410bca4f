"""Quality gate rule, and the one reading of a served model's lineage."""

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dino_model.export.lineage import SIGNATURE_KEY, VERIFIED_KEY
from dino_model.export.signing import PUBLIC_KEYS_ENV, public_pem, sign
from dino_model.serving.gate import (
    DEPLOY,
    HOLD,
    config_lineage,
    decide,
    served_lineage,
    serving_score,
    unfinished_deploy,
)
from dino_model.serving.rollout import UNFINISHED_KEY


@pytest.mark.parametrize(
    "candidate,threshold,serving,expected",
    [(80.0, 50.0, None, DEPLOY), (40.0, 50.0, None, HOLD), (80.0, 50.0, 85.0, HOLD), (85.0, 50.0, 85.0, DEPLOY)],
)
def test_threshold_and_not_worse(candidate, threshold, serving, expected):
    assert decide(candidate, threshold=threshold, serving=serving).decision == expected


def test_not_worse_can_be_disabled_or_tolerant():
    assert decide(80.0, threshold=50.0, serving=85.0, require_not_worse=False).decision == DEPLOY
    assert decide(84.0, threshold=50.0, serving=85.0, tolerance=1.0).decision == DEPLOY
    assert "below the threshold" in decide(10.0, threshold=50.0).reason


def test_unreachable_server_means_nothing_to_compare(free_port):
    assert serving_score(f"127.0.0.1:{free_port}", "dino", "knn_top1", timeout_s=1.0) is None
    assert served_lineage(f"127.0.0.1:{free_port}", "dino", timeout_s=1.0) is None


def test_only_verified_lineage_is_read(monkeypatch):
    key = Ed25519PrivateKey.generate()
    monkeypatch.setenv(PUBLIC_KEYS_ENV, public_pem(key.public_key()).decode())
    lineage = {"data_version": "abc.dir", "metrics": '{"knn_top1": 99.9}'}
    signature = sign(key, "ab" * 32, lineage)
    claimed = {k: {"string_value": v} for k, v in (lineage | {"onnx_sha256": "ab" * 32}).items()}
    assert config_lineage({"parameters": claimed}) is None
    marked = {**claimed, VERIFIED_KEY: {"string_value": "record.json"}}
    assert config_lineage({"parameters": marked}) is None  # the mark alone, without a signature
    signed = {**marked, SIGNATURE_KEY: {"string_value": signature.value}}
    verified = config_lineage({"parameters": signed})
    assert verified is not None and verified["data_version"] == "abc.dir"
    moved = {**signed, "onnx_sha256": {"string_value": "cd" * 32}}  # the signature of another file
    assert config_lineage({"parameters": moved}) is None


def test_a_server_mid_deploy_is_seen_from_its_config_and_ready_versions():
    """What a gate with only the URL can see of a killed deploy (it then refuses to read the lineage)."""
    latest = {"version_policy": {"latest": {"num_versions": 1}}}
    assert unfinished_deploy(latest, ["2"]) == ""
    assert "versions 2, 10 are READY together" in unfinished_deploy(latest, ["10", "2"])
    both = {"version_policy": {"specific": {"versions": [2, 3]}}}  # what older deploys left when killed
    assert "versions 2, 3 are READY together" in unfinished_deploy(both, ["2", "3"])
    assert unfinished_deploy({"version_policy": {"latest": {"num_versions": 2}}}, ["2", "3"]) == ""  # asked for
    pinned = {"version_policy": {"specific": {"versions": [2]}},
              "parameters": {UNFINISHED_KEY: {"string_value": "3"}}}
    assert unfinished_deploy(pinned, ["2"]) == "its config.pbtxt is pinned while version 3 is added"
