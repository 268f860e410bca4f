"""Verified lineage: a file is served with its lineage marked verified only when it matches its export record.

A forged file (metadata edited to claim better metrics or another data version) either contradicts
the export record beside it and is refused, or has no record and is served unverified, so the
quality gate's bar never comes from what a file merely claims about itself.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dino_model.errors import ExportError
from dino_model.export.lineage import VERIFIED_KEY, find_record
from dino_model.export.onnx import read_contract
from dino_model.serving.gate import verified_score
from dino_model.triton.config import RepositoryOptions
from dino_model.triton.repository import read_config, write_model_repository

CLAIMS = {"metrics": json.dumps({"knn_top1": 99.9}), "data_version": "forged.dir"}


def test_export_writes_a_record_per_file(tiny_onnx: Path, tiny_onnx_fp16: Path) -> None:
    for path in (tiny_onnx, tiny_onnx_fp16):
        record = find_record(path)
        assert record is not None and record.source.endswith("model.export.json")
        recorded = {k: v for k, v in read_contract(path).lineage.items() if k in record.lineage}
        assert record.lineage == recorded and json.loads(record.lineage["metrics"])["knn_top1"] >= 0


def test_a_genuine_file_is_served_with_verified_lineage(tiny_onnx: Path, tmp_path: Path, exported_copy) -> None:
    result = write_model_repository(exported_copy(tiny_onnx, tmp_path / "artifact"), tmp_path / "repo",
                                    RepositoryOptions(flavour="cpu"))
    config = read_config(tmp_path / "repo" / "dino")
    recorded = json.loads(read_contract(tiny_onnx).lineage["metrics"])["knn_top1"]
    assert result["lineage_verified"].endswith("model.export.json")
    assert config["parameters"][VERIFIED_KEY]["string_value"] == result["lineage_verified"]
    assert verified_score(config, "knn_top1") == pytest.approx(recorded)


def test_a_file_edited_after_export_is_refused_by_name(tiny_onnx: Path, tmp_path: Path, exported_copy, forge,
                                                       run_cli, capsys) -> None:
    """Metadata rewritten to claim 99.9 % and another data version, beside the genuine export report."""
    genuine = exported_copy(tiny_onnx, tmp_path / "artifact")
    forged = forge(tiny_onnx, genuine, **CLAIMS)
    message = rf"{re.escape(str(forged))} does not match its export record .*model\.export\.json"
    with pytest.raises(ExportError, match=message):
        write_model_repository(forged, tmp_path / "repo", RepositoryOptions(flavour="cpu"))
    code = run_cli(["triton-repo", "--onnx", str(forged), "--repository", str(tmp_path / "repo"), "--flavour", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(forged) in err[0] and "changed after export" in err[0]
    assert not (tmp_path / "repo" / "dino").exists()


def test_a_file_without_a_record_does_not_set_the_bar(tiny_onnx: Path, tmp_path: Path, forge) -> None:
    forged = forge(tiny_onnx, tmp_path / "elsewhere" / "model.onnx", **CLAIMS, lineage_verified="by me")
    write_model_repository(forged, tmp_path / "repo", RepositoryOptions(flavour="cpu"))
    config = read_config(tmp_path / "repo" / "dino")
    assert VERIFIED_KEY not in config["parameters"]  # the file's own claim to be verified is dropped
    assert config["parameters"]["data_version"]["string_value"] == "forged.dir"  # shown, but not trusted
    assert verified_score(config, "knn_top1") is None


def test_a_record_that_disagrees_with_the_file_is_refused(tiny_onnx: Path, tmp_path: Path, exported_copy) -> None:
    path = exported_copy(tiny_onnx, tmp_path / "artifact")
    report = path.with_suffix(".export.json")
    data = json.loads(report.read_text())
    data["details"]["lineage"]["data_version"] = "another.dir"
    report.write_text(json.dumps(data))
    with pytest.raises(ExportError, match="disagree on data_version"):
        write_model_repository(path, tmp_path / "repo", RepositoryOptions(flavour="cpu"))


def test_lineage_overridden_by_hand_is_served_unverified(tiny_onnx: Path, tmp_path: Path, run_cli, capsys) -> None:
    metrics = tmp_path / "claims.json"
    metrics.write_text(json.dumps({"metrics": {"knn_top1": 99.9}}))
    code = run_cli(["triton-repo", "--onnx", str(tiny_onnx), "--repository", str(tmp_path / "repo"), "--flavour",
                    "cpu", "--metrics", str(metrics)])
    assert code == 0 and json.loads(capsys.readouterr().out)["lineage_verified"] == ""
    config = read_config(tmp_path / "repo" / "dino")
    assert json.loads(config["parameters"]["metrics"]["string_value"]) == {"knn_top1": 99.9}
    assert verified_score(config, "knn_top1") is None
