"""Pause points: nothing happens unless the variable names the point, and a misspelt point is refused."""

import pytest

from dino_model.runtime.pause import PausePoints

POINTS = PausePoints("DINO_TEST_PAUSE_AT", ("one", "two"), "paused at {point} ({env}); pid {pid}")


def test_a_point_the_variable_does_not_name_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DINO_TEST_PAUSE_AT", "two")
    POINTS.at("one")
    monkeypatch.delenv("DINO_TEST_PAUSE_AT")
    POINTS.at("two")


def test_an_unknown_point_is_refused() -> None:
    with pytest.raises(ValueError, match="'three' is not one of the pause points"):
        POINTS.at("three")
