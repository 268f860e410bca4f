"""How many CPUs this process may use, and how a CPU model server splits them into instances and threads.

`os.cpu_count()` counts the node's cores. Inside a container limited to 2 CPUs (a pod's `cpu`
limit, a cgroup quota) on a 64-core node, onnxruntime's default (one intra-op thread per physical
core of the node) and one Triton instance per node core oversubscribe the quota many times over,
and the throttled threads then wait for each other. So the count here is the smallest of the CPU
affinity mask and the cgroup quota (v2 `cpu.max`, v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`),
rounded up.

The split: one model instance per usable CPU up to MAX_AUTO_INSTANCES (each `cpu` instance is a
Python stub process holding its own onnxruntime session, so instances cost memory), and the CPUs
left over as intra-op threads of each instance. Independent instances keep every core busy when
several requests are in flight, without the synchronisation of a multi-threaded operator; measured
in docs/benchmarks.md ("Serving"). The Python backend's model.py repeats these few lines (the stub
cannot import this package); a test runs both on the same cgroup files.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
MAX_AUTO_INSTANCES = 4


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs allowed by the cgroup quota (e.g. 1.5), or None when there is no quota or no cgroup file."""
    try:
        fields = (root / "cpu.max").read_text().split()  # cgroup v2: "<quota|max> <period>"
        quota, period = fields[0], fields[1] if len(fields) > 1 else "100000"
    except (OSError, IndexError):
        try:  # cgroup v1
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    if quota == "max" or not quota.lstrip("-").isdigit() or not period.isdigit():
        return None
    if int(quota) <= 0 or int(period) <= 0:
        return None
    return int(quota) / int(period)


def usable_cpus(root: Path = CGROUP_ROOT) -> int:
    """CPUs this process can run on: its affinity mask, capped by the cgroup quota (rounded up); at least 1."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        count = min(count, math.ceil(limit))
    return max(1, count)


def default_instances(cpus: int) -> int:
    """Model instances for `cpus` usable CPUs: one each, at most MAX_AUTO_INSTANCES."""
    return max(1, min(cpus, MAX_AUTO_INSTANCES))


def default_threads(cpus: int, instances: int) -> int:
    """Intra-op threads per instance: the usable CPUs shared out among the instances, at least 1."""
    return max(1, cpus // max(1, instances))
