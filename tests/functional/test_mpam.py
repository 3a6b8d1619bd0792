"""The resctrl backend on an arm64 MPAM host: the simulator's ``arm64-mpam``
preset over FUSE (doc/kernel-facts-mpam.md), real stand-in qemus, real
syscalls.

The host has two L3 domains (CPUs 0-31 and 32-63), ``llc_occupancy`` from
CSU monitors and ``mbm_total_bytes`` from MBWU monitors through 8 assignable
counters per domain (the default group holds one); MPAM has no
``mbm_local_bytes``. Every stand-in is pinned to CPU 0 (it exists on any
machine), so it runs in domain 0 only.

An RMID is a PMG of the control group's PARTID: 16 PMGs, PMG 0 the control
group's own, so at most 15 monitor groups in one control group although
``num_rmids`` reads 512.

Needs /dev/fuse, fusermount3 and libfuse3 (Debian fuse3, libfuse3-3) and root.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from ceilometer_cmt.backends.resctrl import assign_files
from ceilometer_cmt.backends.resctrl.backend import ResctrlBackend
from ceilometer_cmt.monitor import CacheMonitor, CycleResult
from ceilometer_cmt.readings import InstanceRef
from ceilometer_cmt.simulator import Simulator
from tests.support.fuse import needs_fuse_root

pytestmark = needs_fuse_root

PREFIX = "ceilometer-"
UUIDS = [f"{n:08x}-2222-4222-8222-222222222222" for n in range(1, 4)]
NAMES = {u: f"instance-{n:08x}" for n, u in enumerate(UUIDS, 1)}
MIB = 1024 * 1024
OCCUPANCY, TOTAL = 4 * MIB, 100 * MIB  # bytes in / bytes/s from domain 0 each


@pytest.fixture
def mpam_host(simulated_host: Any) -> Callable[[], tuple[Simulator, str, str]]:
    """(simulator of preset arm64-mpam, sysfs root, libvirt pid dir), one
    stand-in qemu per instance pinned to CPU 0, each loading domain 0."""
    def make() -> tuple[Simulator, str, str]:
        load = [{"match": {"cmdline": f"guest={n},"}, "timeline": [
            {"t": 0, "occupancy": {0: OCCUPANCY}, "mbm_total": {0: TOTAL}}]}
            for n in NAMES.values()]
        return simulated_host("arm64-mpam", {"processes": load}, NAMES.values(), cpus={0})
    return make


class Poller:
    def __init__(self, sim: Simulator, sysfs: str, pid_dir: str) -> None:
        self.sim = sim
        self.backend = ResctrlBackend(sim.mountpoint, sysfs_root=sysfs, pid_dir=pid_dir,
                                      prefix=PREFIX)
        self.now = 0.0
        self.mon = CacheMonitor(self.backend, clock=lambda: self.now)

    def poll(self, refs: list[InstanceRef]) -> CycleResult:
        self.sim.advance(60.0)
        self.now += 60.0
        return self.mon.poll(refs)


def test_occupancy_and_total_bandwidth_per_instance_and_never_local(mpam_host: Any) -> None:
    sim, sysfs, pid_dir = mpam_host()
    p = Poller(sim, sysfs, pid_dir)
    refs = [InstanceRef(u, n) for u, n in NAMES.items()]
    try:
        assert p.backend.info.mon_features == ("llc_occupancy", "mbm_total_bytes")
        assert p.backend.mbm is not None
        first = p.poll(refs)
        second = p.poll(refs)
        for r in (first, second):
            assert set(r.instances) == set(UUIDS)
            # MPAM cannot count local traffic: no reason to list, no value, never 0
            assert r.unmonitored == {}
        for u in UUIDS:
            m = second.instances[u]
            assert m.occupancy == pytest.approx(OCCUPANCY, rel=0.05)
            assert m.mbm_total_bytes is not None and m.mbm_total_bytes > 0
            assert m.mbm_total_rate == pytest.approx(TOTAL, rel=0.02)
            assert (m.mbm_local_bytes, m.mbm_local_rate) == (None, None)
            assert first.instances[u].mbm_local_bytes is None
            # the kernel assigned total in both domains on mkdir; the
            # backend gave domain 1's back (the threads may only run on CPU 0)
            group = f"{sim.mountpoint}/mon_groups/{PREFIX}{u}"
            assert assign_files.read_assignments(group) == {"mbm_total_bytes": {0: True, 1: False}}
            assert sorted(os.listdir(f"{group}/mon_data/mon_L3_00")) == [
                "llc_occupancy", "mbm_total_bytes"]
        # the default group's one counter per domain, one per instance in domain 0
        assert assign_files.read_available_mbm_cntrs(sim.mountpoint) == {0: 4, 1: 7}
    finally:
        p.mon.close()


def _tids(pid_dir: str, name: str) -> list[int]:
    with open(os.path.join(pid_dir, name + ".pid"), encoding="ascii") as f:
        pid = int(f.read().strip())
    return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))


def test_a_control_group_out_of_pmgs_leaves_the_others_monitored(mpam_host: Any) -> None:
    """Another tool holds 15 monitor groups in the default group: every PMG
    of PARTID 0. The first instance, in the default group, gets no group
    ("no free RMID", None values, never 0) while num_rmids still reads 512;
    the second, whose threads sit in a control group of its own PARTID, is
    monitored in the same cycle. Once a PMG is free the first one is too.
    (The other tool's groups took the free MBM counters of domain 0 on
    mkdir, so only occupancy is compared.)"""
    sim, sysfs, pid_dir = mpam_host()
    root = sim.mountpoint
    first, second = UUIDS[0], UUIDS[1]
    refs = [InstanceRef(first, NAMES[first]), InstanceRef(second, NAMES[second])]
    for i in range(15):
        os.mkdir(f"{root}/mon_groups/other-{i}")
    with pytest.raises(OSError):
        os.mkdir(f"{root}/mon_groups/other-15")
    os.mkdir(f"{root}/cachetune")
    for tid in _tids(pid_dir, NAMES[second]):
        with open(f"{root}/cachetune/tasks", "w", encoding="ascii") as f:
            f.write(f"{tid}\n")
    p = Poller(sim, sysfs, pid_dir)
    try:
        r = p.poll(refs)
        assert "no free RMID (ENOSPC)" in r.unmonitored[first]
        m = r.instances.get(first)
        assert m is None or (m.occupancy, m.mbm_total_bytes) == (None, None)
        # the other tool's groups took domain 0's free MBM counters on mkdir:
        # the second instance lacks one, but not a monitor group
        assert "RMID" not in r.unmonitored.get(second, "")
        assert os.path.isdir(f"{root}/cachetune/mon_groups/{PREFIX}{second}")
        r = p.poll(refs)
        assert r.instances[second].occupancy == pytest.approx(OCCUPANCY, rel=0.05)
        assert r.instances[second].mbm_total_bytes is None
        with open(f"{root}/info/L3_MON/num_rmids", encoding="ascii") as f:
            assert f.read() == "512\n"
        os.rmdir(f"{root}/mon_groups/other-0")
        p.poll(refs)
        r = p.poll(refs)
        assert not any("RMID" in why for why in r.unmonitored.values())
        assert r.instances[first].occupancy == pytest.approx(OCCUPANCY, rel=0.05)
    finally:
        p.mon.close()
