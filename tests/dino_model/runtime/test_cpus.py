"""Usable CPUs from affinity and the cgroup quota, and how a CPU model server splits them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dino_model.runtime import cpus


def _cgroup(root: Path, *, v2: str | None = None, v1: tuple[str, str] | None = None) -> Path:
    if v2 is not None:
        (root / "cpu.max").write_text(v2 + "\n")
    if v1 is not None:
        (root / "cpu").mkdir()
        (root / "cpu" / "cpu.cfs_quota_us").write_text(v1[0] + "\n")
        (root / "cpu" / "cpu.cfs_period_us").write_text(v1[1] + "\n")
    return root


# (cgroup files, quota in CPUs): v2 and v1 layouts, no quota, and files that cannot be read as one
CGROUPS = [
    ({"v2": "max 100000"}, None),
    ({"v2": "200000 100000"}, 2.0),
    ({"v2": "150000 100000"}, 1.5),
    ({"v2": "50000 100000"}, 0.5),
    ({"v1": ("-1", "100000")}, None),
    ({"v1": ("400000", "100000")}, 4.0),
    ({"v2": "garbage"}, None),
    ({"v2": "0 100000"}, None),
    ({}, None),
]


@pytest.mark.parametrize(("files", "expected"), CGROUPS)
def test_cgroup_cpu_limit(tmp_path: Path, files: dict, expected: float | None) -> None:
    assert cpus.cgroup_cpu_limit(_cgroup(tmp_path, **files)) == expected


@pytest.mark.parametrize(("affinity", "files", "expected"), [
    (64, {"v2": "200000 100000"}, 2),      # a pod limited to 2 CPUs on a 64-core node
    (64, {"v2": "150000 100000"}, 2),      # 1.5 CPUs: rounded up
    (64, {"v2": "50000 100000"}, 1),
    (2, {"v2": "800000 100000"}, 2),       # a quota above the affinity mask does not add CPUs
    (6, {"v2": "max 100000"}, 6),
    (3, {}, 3),
])
def test_usable_cpus_is_the_smaller_of_affinity_and_quota(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          affinity: int, files: dict, expected: int) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(affinity)))
    assert cpus.usable_cpus(_cgroup(tmp_path, **files)) == expected


@pytest.mark.parametrize(("usable", "instances", "threads"), [
    (1, 1, 1), (2, 2, 1), (3, 3, 1), (4, 4, 1), (6, 4, 1), (8, 4, 2), (16, 4, 4), (64, 4, 16),
])
def test_cores_to_instances_and_threads(usable: int, instances: int, threads: int) -> None:
    assert cpus.default_instances(usable) == instances
    assert cpus.default_threads(usable, instances) == threads
    assert instances * threads <= usable  # never more busy threads than CPUs


def test_an_explicit_instance_count_shares_the_cpus() -> None:
    assert cpus.default_threads(2, 1) == 2 and cpus.default_threads(2, 3) == 1 and cpus.default_threads(8, 3) == 2


def test_this_machine() -> None:
    assert 1 <= cpus.usable_cpus() <= len(os.sched_getaffinity(0))
