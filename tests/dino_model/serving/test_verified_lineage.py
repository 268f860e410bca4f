"""The quality gate's bar comes only from verified lineage, on a live tritonserver.

A file whose metadata was edited to claim 99.9 % k-NN top-1 and another data version is refused
when the export record beside it says otherwise, and served without moving the bar when it has no
record; a genuine export deploys and sets the bar to its recorded score. In the pipeline the record
comes from KFP's metadata store, so even a file rewritten together with the report beside it is
refused. A forged file with a forged record beside it (or in the metadata) is served, but unverified:
the record's signature, made by the export's private key, does not cover it. The tests run in file
order on one server.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from kfp.dsl import Model

from components.deploy import deploy_to_triton, quality_gate
from dino_model.errors import ExportError
from dino_model.export.lineage import LineageRecord, file_sha256, find_record
from dino_model.export.onnx import read_contract
from dino_model.serving.client import EmbeddingClient
from dino_model.serving.gate import serving_score
from dino_model.serving.rollout import ready_versions, roll_out

pytestmark = pytest.mark.triton

CLAIMS = {"metrics": json.dumps({"knn_top1": 99.9}), "data_version": "forged.dir"}


@pytest.fixture(scope="module")
def recorded_top1(tiny_onnx: Path) -> float:
    return json.loads(read_contract(tiny_onnx).lineage["metrics"])["knn_top1"]


def _served(server, repository: Path) -> tuple[list[int], list[str], str]:
    model_dir = repository / "dino"
    return (ready_versions(EmbeddingClient(server.grpc_url, headers=server.admin_headers)),
            sorted(p.name for p in model_dir.iterdir()), (model_dir / "config.pbtxt").read_text())


def test_a_forged_file_beside_its_export_report_is_refused(live, tiny_onnx: Path, tmp_path: Path, exported_copy,
                                                           forge, recorded_top1: float) -> None:
    server, repository = live
    assert serving_score(server.grpc_url, "dino", "knn_top1") == pytest.approx(recorded_top1)  # the genuine bar
    before = _served(server, repository)
    forged = forge(tiny_onnx, exported_copy(tiny_onnx, tmp_path / "artifact"), **CLAIMS)
    with pytest.raises(ExportError, match=rf"{re.escape(str(forged))} does not match its export record"):
        roll_out(forged, repository, url=server.grpc_url)
    assert _served(server, repository) == before
    assert serving_score(server.grpc_url, "dino", "knn_top1") == pytest.approx(recorded_top1)


def test_a_forged_file_without_a_record_does_not_move_the_bar(live, tiny_onnx: Path, tmp_path: Path, forge,
                                                              recorded_top1: float) -> None:
    server, repository = live
    forged = forge(tiny_onnx, tmp_path / "elsewhere" / "model.onnx", **CLAIMS)
    result = roll_out(forged, repository, url=server.grpc_url)
    assert result["serving_versions"] == [2] and "lineage_verified" not in result["lineage"]
    assert serving_score(server.grpc_url, "dino", "knn_top1") is None  # not 99.9
    # so the claim cannot hold back a genuine candidate in the pipeline's gate
    assert quality_gate.python_func(knn_top1=recorded_top1, min_top1=0.0, require_not_worse=True,
                                    triton_url=server.grpc_url, model_name="dino") == "deploy"


def test_the_pipeline_checks_the_file_against_the_record_in_its_metadata(live, tiny_onnx: Path, tmp_path: Path,
                                                                         exported_copy, forge,
                                                                         recorded_top1: float) -> None:
    """The file and the report beside it both rewritten: only KFP's metadata still holds the truth."""
    server, repository = live
    genuine = find_record(tiny_onnx)
    folder = tmp_path / "artifact"
    forged = forge(tiny_onnx, exported_copy(tiny_onnx, folder), **CLAIMS)
    report = json.loads((folder / "model.export.json").read_text())
    report["details"]["files"]["fp32"]["sha256"] = file_sha256(forged)
    report["details"]["lineage"] |= CLAIMS
    (folder / "model.export.json").write_text(json.dumps(report))
    before = _served(server, repository)
    with pytest.raises(ExportError, match=r"model\.onnx does not match its export record the pipeline's metadata"):
        deploy_to_triton.python_func(onnx=Model(uri=str(folder), metadata=genuine.to_metadata()),
                                     repository=str(repository), triton_url=server.grpc_url, model_name="dino",
                                     flavour="cpu", pushgateway="")
    assert _served(server, repository) == before
    genuine_folder = tmp_path / "genuine"
    exported_copy(tiny_onnx, genuine_folder)
    version = deploy_to_triton.python_func(onnx=Model(uri=str(genuine_folder), metadata=genuine.to_metadata()),
                                           repository=str(repository), triton_url=server.grpc_url,
                                           model_name="dino", flavour="cpu", pushgateway="")
    assert version == 3 and _served(server, repository)[0] == [3]
    assert serving_score(server.grpc_url, "dino", "knn_top1") == pytest.approx(recorded_top1)
    assert LineageRecord.from_metadata({"sha256": ""}, source="x") is None


def _forge_with_record(tiny_onnx: Path, folder: Path, exported_copy, forge) -> Path:
    """A forged file and, beside it, the genuine export report rewritten to record its sha256 and claims."""
    forged = forge(tiny_onnx, exported_copy(tiny_onnx, folder), **CLAIMS)
    report = json.loads((folder / "model.export.json").read_text())
    report["details"]["files"]["fp32"]["sha256"] = file_sha256(forged)
    report["details"]["lineage"] |= CLAIMS
    (folder / "model.export.json").write_text(json.dumps(report))
    return forged


def test_a_forged_file_with_a_forged_record_beside_it_does_not_set_the_bar(live, tiny_onnx: Path, tmp_path: Path,
                                                                           exported_copy, forge,
                                                                           recorded_top1: float) -> None:
    """Whoever can write the folder rewrites both; the record's signature no longer matches, so: unverified."""
    server, repository = live
    forged = _forge_with_record(tiny_onnx, tmp_path / "artifact", exported_copy, forge)
    result = roll_out(forged, repository, url=server.grpc_url)
    assert result["serving_versions"] == [4] and "lineage_verified" not in result["lineage"]
    assert serving_score(server.grpc_url, "dino", "knn_top1") is None  # not 99.9
    assert quality_gate.python_func(knn_top1=recorded_top1, min_top1=0.0, require_not_worse=True,
                                    triton_url=server.grpc_url, model_name="dino") == "deploy"


def test_the_pipeline_serves_metadata_without_a_valid_signature_unverified(live, tiny_onnx: Path, tmp_path: Path,
                                                                         exported_copy, forge) -> None:
    """A record in the artifact's metadata naming the forged file, with the genuine record's signature."""
    server, repository = live
    folder = tmp_path / "artifact"
    forged = _forge_with_record(tiny_onnx, folder, exported_copy, forge)
    record = find_record(forged)
    assert record is not None and record.signature is not None  # copied from the genuine file
    version = deploy_to_triton.python_func(onnx=Model(uri=str(folder), metadata=record.to_metadata()),
                                           repository=str(repository), triton_url=server.grpc_url,
                                           model_name="dino", flavour="cpu", pushgateway="")
    assert version == 5 and serving_score(server.grpc_url, "dino", "knn_top1") is None
    unsigned = {k: v for k, v in record.to_metadata().items() if k != "signature"}
    assert LineageRecord.from_metadata(unsigned, source="x").signature is None
