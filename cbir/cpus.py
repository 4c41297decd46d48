"""How many CPU cores this process may use: one answer for every part of cbir.

The affinity mask says which cores the process may run on; a container's
cgroup CPU quota says how much of them it may use. Engines and worker pools
sized from the mask alone start more threads than the quota lets run, and
those threads then wait for each other.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Where the cgroup file systems are mounted (a test points it at a fake one).
CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cores() -> int:
    """CPU cores this process may use: its affinity mask, capped by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    if quota is not None:
        cores = min(cores, quota)
    return max(1, cores)


def cgroup_cpu_limit() -> int | None:
    """The cgroup CPU quota in whole cores (rounded), or ``None`` without one."""
    try:  # cgroup v2: "max 100000" or "200000 100000"
        quota, period = (CGROUP_ROOT / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return max(1, int(int(quota) / int(period) + 0.5))
        return None
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota = int((CGROUP_ROOT / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((CGROUP_ROOT / "cpu" / "cpu.cfs_period_us").read_text())
        return max(1, int(quota / period + 0.5)) if quota > 0 else None
    except (OSError, ValueError):
        return None
