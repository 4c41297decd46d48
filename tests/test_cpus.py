"""One core count for engines and worker pools, under a container's CPU quota too."""

from __future__ import annotations

import os

import pytest

import cbir.cpus as cpus
from cbir.features import runtimes


@pytest.fixture
def one_cpu_quota(tmp_path, monkeypatch):
    """A fake cgroup v2 mount allowing one CPU (100 ms per 100 ms period)."""
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    monkeypatch.setattr(cpus, "CGROUP_ROOT", tmp_path)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})


def test_engines_and_pools_agree_under_a_cgroup_quota(one_cpu_quota):
    """The engines counted the affinity mask only, so they ran 4 threads on a 1-CPU quota."""
    assert cpus.usable_cores() == 1
    assert runtimes.cpu_count() == 1


@pytest.mark.parametrize(
    "files, expected",
    [
        ({"cpu.max": "max 100000"}, 4),
        ({"cpu.max": "250000 100000"}, 3),  # 2.5 CPUs round to 3
        ({"cpu/cpu.cfs_quota_us": "200000", "cpu/cpu.cfs_period_us": "100000"}, 2),  # cgroup v1
        ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, 4),  # v1 without a quota
        ({}, 4),  # no cgroup file system
    ],
)
def test_the_quota_caps_the_affinity_mask(tmp_path, monkeypatch, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(cpus, "CGROUP_ROOT", tmp_path)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert cpus.usable_cores() == expected
    assert runtimes.cpu_count() == expected
