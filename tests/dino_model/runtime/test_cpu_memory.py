"""Freed memory kept for reuse: a large block allocated again does not page-fault again (glibc only).

Each case runs in a child process: the setting is process-wide and would otherwise stay on for the
rest of the test session.
"""

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

CHILD = """
import resource, sys
from dino_model.runtime.cpu_memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory() and keep_freed_memory()  # a second call is a no-op that still reports True
size, faults = 64 << 20, []
for _ in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = bytearray(size)
    block[::4096] = b"\\x01" * len(range(0, size, 4096))  # touch every page
    del block
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(faults[-1])
"""


def _faults_of_the_last_allocation(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def test_a_reallocated_block_is_served_from_kept_pages() -> None:
    pages = (64 << 20) // 4096
    assert _faults_of_the_last_allocation("default") > pages // 2  # mmap'd afresh, zeroed by the kernel
    assert _faults_of_the_last_allocation("keep") < pages // 20  # the heap block of the previous round
