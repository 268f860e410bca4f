"""File locks with a deadline: a second holder waits, then gets LockBusyError; a folder can be locked."""

import threading
import time
from pathlib import Path

import pytest

from dino_model.runtime import locks


@pytest.mark.parametrize("folder", [False, True])
def test_a_second_holder_is_refused_after_its_deadline(tmp_path: Path, folder: bool) -> None:
    target = tmp_path if folder else tmp_path / "state.lock"
    with locks.exclusive(target):
        start = time.monotonic()
        with pytest.raises(locks.LockBusyError), locks.exclusive(target, timeout_s=0.3):
            pass
        assert time.monotonic() - start >= 0.3
    with locks.exclusive(target):  # released
        pass


def test_a_waiter_gets_the_lock_once_it_is_released(tmp_path: Path) -> None:
    target, got = tmp_path / "state.lock", []
    with locks.exclusive(target):
        waiter = threading.Thread(target=lambda: got.append(locks.exclusive(target, timeout_s=5).__enter__()))
        waiter.start()
        time.sleep(0.2)
        assert not got
    waiter.join(5)
    assert got == [None]
