"""The one git runner: errors name the command (without credentials), a timeout stops it."""

from pathlib import Path

import pytest

from dino_model.errors import DataError
from dino_model.runtime import git


def test_a_failure_names_the_command_and_hides_credentials(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"`git clone --quiet https://host/x\.git") as info:
        git.run(["clone", "--quiet", "https://u:s3cret@host/x.git", str(tmp_path / "c")], cwd=tmp_path,
                timeout_s=0.001)
    assert "s3cret" not in str(info.value)


def test_output_and_questions(tmp_path: Path) -> None:
    git.run(["init", "--quiet", str(tmp_path)])
    assert Path(git.output(["rev-parse", "--show-toplevel"], cwd=tmp_path).strip()) == tmp_path.resolve()
    assert not git.succeeds(["rev-parse", "--verify", "--quiet", "HEAD"], cwd=tmp_path)
    with pytest.raises(git.GitError, match="failed in") as info:
        git.run(["rev-parse", "--verify", "no-such-rev"], cwd=tmp_path)
    assert info.value.detail


def test_a_token_is_served_by_a_helper_not_a_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DINO_GIT_TOKEN", "tok-123")
    env = git.git_environment()
    assert env["GIT_TERMINAL_PROMPT"] == "0" and "tok-123" not in env["GIT_CONFIG_VALUE_0"]
