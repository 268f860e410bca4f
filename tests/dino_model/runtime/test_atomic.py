"""The one atomic write: a whole new file or the old one, a private temporary, nothing left behind."""

import json
import stat
from pathlib import Path

import pytest

from dino_model.runtime import atomic


def test_replaces_a_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    atomic.write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_a_failing_writer_keeps_the_old_file_and_removes_its_temporary(tmp_path: Path) -> None:
    target = tmp_path / "model.bin"
    target.write_bytes(b"old")

    def fail(fh) -> None:
        fh.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic.write_with(target, fail)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin"]


@pytest.mark.parametrize(("mode", "expected"), [(None, 0o600), (0o644, 0o644)])
def test_mode_is_set_before_the_rename(tmp_path: Path, mode: int | None, expected: int) -> None:
    target = atomic.write_text(tmp_path / "key", "secret", mode=mode)
    assert stat.S_IMODE(target.stat().st_mode) == expected


def test_two_writers_use_different_temporaries(tmp_path: Path) -> None:
    target = tmp_path / "config.pbtxt"
    with atomic.replacing(target) as first, atomic.replacing(target) as second:
        assert first != second and first.parent == second.parent == tmp_path
        assert first.name.startswith(".config.pbtxt.")
        first.write_text("one")
        second.write_text("two")
    assert target.read_text() == "one"


def test_a_hidden_name_is_not_hidden_twice() -> None:
    assert atomic.temporary_prefix(Path("m/.deploy-journal.json")) == ".deploy-journal.json."
