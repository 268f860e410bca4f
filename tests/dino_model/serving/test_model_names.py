"""Model names and versions are checked wherever they enter, before any path is built from them.

A name becomes a folder of the model repository, which deploy and release write into and delete
from, so `../x`, absolute paths, separators and odd characters are refused with one line; versions
must be whole numbers from 1 to MAX_VERSION. None of these needs a server: each refusal comes first.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dino_model.errors import ConfigError
from dino_model.runtime.processes import free_ports
from dino_model.serving.deploy import deploy
from dino_model.serving.gate import serving_score
from dino_model.serving.rollout import recover, roll_out
from dino_model.triton.config import MAX_VERSION, check_model_name, check_version

BAD_NAMES = ["../x", "/etc", "", "a/b", "a\\b", "..", ".hidden", "dino model", "dino;rm", "é", "x" * 65,
             "dino\nname", "dino_candidate"]
BAD_VERSIONS = ["0", "-1", "-7", str(MAX_VERSION + 1), "1" + "0" * 30, "1.5", "abc", "0x10"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="model name"):
        check_model_name(name)


@pytest.mark.parametrize("name", ["dino", "dino-v2", "resnet_50.onnx", "A1", "x" * 64])
def test_good_names_pass(name: str) -> None:
    assert check_model_name(name) == name


@pytest.mark.parametrize("version", BAD_VERSIONS)
def test_bad_versions_are_refused(version: str) -> None:
    with pytest.raises(ConfigError, match="model version"):
        check_version(version)


def test_good_versions_pass() -> None:
    assert [check_version(v) for v in (1, "2", 1_700_000_000, MAX_VERSION)] == [1, 2, 1_700_000_000, MAX_VERSION]


def _one_line_error(run_cli, capsys, argv: list[str]) -> str:
    code = run_cli(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("name", ["../outside", "/tmp/abs", "", "a/b", "bad name"])
def test_triton_repo_refuses_bad_names(name: str, tiny_onnx: Path, tmp_path: Path, run_cli, capsys) -> None:
    repo = tmp_path / "deep" / "repo"
    err = _one_line_error(run_cli, capsys, ["triton-repo", "--onnx", str(tiny_onnx), "--repository", str(repo),
                                            "--flavour", "cpu", "--model-name", name])
    assert "model name" in err
    assert not list(tmp_path.rglob("config.pbtxt")) and not (tmp_path / "outside").exists()


@pytest.mark.parametrize("version", ["0", "-1", str(MAX_VERSION + 1), "1" + "0" * 30])
def test_triton_repo_refuses_bad_versions(version: str, tiny_onnx: Path, tmp_path: Path, run_cli, capsys) -> None:
    err = _one_line_error(run_cli, capsys, ["triton-repo", "--onnx", str(tiny_onnx), "--repository",
                                            str(tmp_path / "repo"), "--flavour", "cpu", "--version", version])
    assert f"model version {version} is out of range" in err
    assert not (tmp_path / "repo").exists()


def test_deploy_refuses_a_name_outside_the_repository(tiny_onnx: Path, tmp_path: Path, run_cli, capsys,
                                                      free_port: int) -> None:
    """`../victim` resolves to a real model folder beside the repository: nothing there may be touched."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "config.pbtxt").write_text('name: "victim"\n')
    (tmp_path / "repo").mkdir()
    for argv in (["deploy", "--onnx", str(tiny_onnx)], ["deploy", "--recover"]):
        err = _one_line_error(run_cli, capsys, [*argv, "--repository", str(tmp_path / "repo"), "--url",
                                                f"127.0.0.1:{free_port}", "--model-name", "../victim"])
        assert "model name '../victim' is not allowed" in err
    assert sorted(p.name for p in victim.iterdir()) == ["config.pbtxt"]


@pytest.mark.parametrize("call", [
    lambda repo, url, onnx: roll_out(onnx, repo, url=url, model_name="/abs/path"),
    lambda repo, url, onnx: recover(repo, url=url, model_name="a/b"),
    lambda repo, url, onnx: deploy(onnx, repo, url=url, model_name=".."),
    lambda repo, url, onnx: serving_score(url, "", "knn_top1"),
])
def test_library_entry_points_refuse_bad_names_before_any_call(call, tiny_onnx: Path, tmp_path: Path,
                                                               free_port: int) -> None:
    with pytest.raises(ConfigError, match="model name"):
        call(tmp_path, f"127.0.0.1:{free_port}", tiny_onnx)


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--model-name", "../x", "model name '../x' is not allowed"),
    ("--model-name", "", "model name '' is empty"),
    ("--model-version", "0", "model version 0 is out of range"),
    ("--model-version", "-3", "model version -3 is out of range"),
    ("--model-version", "latest", "model version 'latest' is not a whole number"),
])
def test_infer_refuses_bad_names_and_versions(flag: str, value: str, message: str, tmp_path: Path, run_cli, capsys,
                                              free_port: int) -> None:
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    err = _one_line_error(run_cli, capsys, ["infer", str(image_dir), "--output", str(tmp_path / "out.npy"),
                                            "--url", f"127.0.0.1:{free_port}", f"{flag}={value}"])
    assert message in err and not (tmp_path / "out.npy").exists()


def test_serve_refuses_bad_model_names(tmp_path: Path, run_cli, capsys) -> None:
    ports = [str(p) for p in free_ports(3)]
    err = _one_line_error(run_cli, capsys, ["serve", "--repository", str(tmp_path), "--model", "dino",
                                            "--model", "../etc", "--http-port", ports[0], "--grpc-port", ports[1],
                                            "--metrics-port", ports[2]])
    assert "model name '../etc' is not allowed" in err
