"""MBM counter assignment (Linux 6.18 ``mbm_event``, AMD ABMC) through the real
simulator over FUSE: more instances than counters, real qemu stand-ins whose
real CPU affinity decides the L3 domains they need counters in.

The simulated host (preset ``amd-abmc``) has two L3 domains, CPUs 0-7 and
8-15, 8 counters each; the default group holds total and local in both from
boot. Every stand-in is pinned to CPU 0 (it exists on any machine), so it
may run in domain 0 only: 6 counters there for 5 instances, total before
local: 5 totals and one local.

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
from ceilometer_cmt.testing import mbm_assign_tree as abmc
from tests.support.fuse import needs_fuse_root

pytestmark = needs_fuse_root

PREFIX = "ceilometer-"
UUIDS = [f"{n:08x}-1111-4111-8111-111111111111" for n in range(1, 6)]
NAMES = {u: f"instance-{n:08x}" for n, u in enumerate(UUIDS, 1)}
MIB = 1024 * 1024
TOTAL, LOCAL = 100 * MIB, 60 * MIB  # bytes/s each instance moves in domain 0


@pytest.fixture
def abmc_host(simulated_host: Any) -> Callable[[dict[str, Any]], tuple[Simulator, str, str]]:
    """(simulator of preset amd-abmc, sysfs root, libvirt pid dir), one stand-in
    qemu per instance pinned to CPU 0, each loading domain 0."""
    def make(scenario: dict[str, Any]) -> tuple[Simulator, str, str]:
        load = [{"match": {"cmdline": f"guest={n},"}, "timeline": [
            {"t": 0, "occupancy": {0: "4MiB"}, "mbm_total": {0: TOTAL},
             "mbm_local": {0: LOCAL}}]} for n in NAMES.values()]
        return simulated_host("amd-abmc", {"processes": load, **scenario}, NAMES.values(),
                              cpus={0})
    return make


def _with_counters(result: CycleResult) -> set[str]:
    return {u for u, m in result.instances.items() if m.mbm_total_bytes is not None}


def _local(result: CycleResult) -> set[str]:
    return {u for u, m in result.instances.items() if m.mbm_local_bytes is not None}


def test_more_instances_than_counters(abmc_host: Any) -> None:
    sim, sysfs, pid_dir = abmc_host({})
    backend = ResctrlBackend(sim.mountpoint, sysfs_root=sysfs, pid_dir=pid_dir, prefix=PREFIX)
    now = [0.0]
    mon = CacheMonitor(backend, clock=lambda: now[0])
    refs = [InstanceRef(u, n) for u, n in NAMES.items()]

    def poll(rs: list[InstanceRef] = refs) -> CycleResult:
        sim.advance(60.0)
        now[0] += 60.0
        return mon.poll(rs)

    try:
        assert backend.mbm is not None
        first = poll()
        # occupancy for all five, total bandwidth for all, local for the first
        assert set(first.instances) == set(UUIDS)
        assert all(m.occupancy for m in first.instances.values())
        assert _with_counters(first) == set(UUIDS) and _local(first) == {UUIDS[0]}
        waiting = set(UUIDS[1:])
        for u in waiting:
            m = first.instances[u]
            assert (m.mbm_local_bytes, m.mbm_local_rate) == (None, None)
            assert first.unmonitored[u] == (
                "no MBM counter: mbm_local_bytes: no free MBM counter in L3 domain(s) [0] "
                "(held by instances of equal or higher priority, or by other tools)")
        assert set(first.unmonitored) == waiting
        # only where the threads may run: domain 1's counters, assigned by the
        # kernel on mkdir, went back (the default group keeps its two)
        assert assign_files.read_available_mbm_cntrs(sim.mountpoint) == {0: 0, 1: 6}
        assert assign_files.read_assignments(
            f"{sim.mountpoint}/mon_groups/{PREFIX}{UUIDS[1]}") == {
            "mbm_total_bytes": {0: True, 1: False},
            "mbm_local_bytes": {0: False, 1: False}}

        # no flapping over 100 cycles: the same holders, no write, no plan
        poll()
        written, plans = backend.mbm.lines_written, backend.mbm.plans
        reads = backend.mbm.file_reads
        last: dict[str, int] = {}
        for _ in range(100):
            r = poll()
            assert _with_counters(r) == set(UUIDS) and _local(r) == {UUIDS[0]}
            assert set(r.unmonitored) == waiting
            for u in UUIDS:
                m = r.instances[u]
                assert m.mbm_total_rate == pytest.approx(TOTAL, rel=0.02)
                assert m.mbm_total_bytes is not None and m.mbm_total_bytes >= last.get(u, 0)
                last[u] = m.mbm_total_bytes
            assert r.instances[UUIDS[0]].mbm_local_rate == pytest.approx(LOCAL, rel=0.02)
        assert (backend.mbm.lines_written, backend.mbm.plans) == (written, plans)
        # each group's file is read again once per RELIST cycles, not each cycle
        assert backend.mbm.file_reads - reads == 100 * len(UUIDS) // 10

        # the last instance leaves: its counter goes to the next waiting one
        rest = refs[:-1]
        after = poll(rest)
        assert _local(after) == {UUIDS[0], UUIDS[1]}
        assert set(after.unmonitored) == {UUIDS[2], UUIDS[3]}
        # a new counter: the cumulative starts, the rate comes one cycle later
        m = after.instances[UUIDS[1]]
        assert m.mbm_local_bytes is not None and m.mbm_local_rate is None
        later = poll(rest)
        assert later.instances[UUIDS[1]].mbm_local_rate == pytest.approx(LOCAL, rel=0.02)
        # the others kept theirs: no reset, no gap
        assert later.instances[UUIDS[0]].mbm_local_rate == pytest.approx(LOCAL, rel=0.02)
        assert after.instances[UUIDS[2]].mbm_total_rate == pytest.approx(TOTAL, rel=0.02)
    finally:
        mon.close()


def test_priority_takes_counters_and_cumulative_stays_monotonic(abmc_host: Any) -> None:
    sim, sysfs, pid_dir = abmc_host({})
    backend = ResctrlBackend(sim.mountpoint, sysfs_root=sysfs, pid_dir=pid_dir, prefix=PREFIX)
    now = [0.0]
    mon = CacheMonitor(backend, clock=lambda: now[0])

    def poll(prio: dict[str, int], without: str = "") -> CycleResult:
        sim.advance(60.0)
        now[0] += 60.0
        return mon.poll([InstanceRef(u, n, prio.get(u, 0)) for u, n in NAMES.items()
                         if u != without])

    try:
        first = poll({})
        poll({})
        assert _local(first) == {UUIDS[0]}
        vip = UUIDS[4]
        # priority 10 takes the local counter of a holder of priority 0
        r = poll({vip: 10})
        assert _local(r) == {vip} and _with_counters(r) == set(UUIDS)
        assert "its counters went to instance" in r.unmonitored[UUIDS[0]]
        assert "higher priority" in r.unmonitored[UUIDS[0]]
        assert vip not in r.unmonitored
        cum = r.instances[UUIDS[0]].mbm_total_bytes
        # the priority back to 0: nobody loses what it holds now (no flapping)
        written = backend.mbm.lines_written  # type: ignore[union-attr]
        for _ in range(5):
            assert _local(poll({})) == {vip}
        assert backend.mbm.lines_written == written  # type: ignore[union-attr]
        # the vip leaves: its two counters go to the two oldest waiting for a
        # local, newly assigned: new keys, the cumulative goes on, no rate once
        resets = backend.mbm.resets  # type: ignore[union-attr]
        local_before = first.instances[UUIDS[0]].mbm_local_bytes
        back = poll({}, without=vip)
        assert _local(back) == {UUIDS[0], UUIDS[1]}
        assert backend.mbm.resets == resets + 2  # type: ignore[union-attr]
        m = back.instances[UUIDS[0]]
        assert local_before is not None and m.mbm_local_bytes is not None
        assert m.mbm_local_bytes >= local_before and m.mbm_local_rate is None
        assert cum is not None and m.mbm_total_bytes is not None and m.mbm_total_bytes > cum
        again = poll({}, without=vip)
        m2 = again.instances[UUIDS[0]]
        assert m2.mbm_local_rate == pytest.approx(LOCAL, rel=0.02)
        assert m2.mbm_local_bytes == pytest.approx(m.mbm_local_bytes + 60 * LOCAL, rel=0.02)
    finally:
        mon.close()


def test_groups_removed_by_another_tool(abmc_host: Any, caplog: Any) -> None:
    """``pqos -r`` removes every monitor group, ours too, every 10th cycle:
    counted, one WARNING per cycle naming the likely cause, the groups and
    their counters made again, and the cumulative meters stay monotonic."""
    import logging

    sim, sysfs, pid_dir = abmc_host({})
    backend = ResctrlBackend(sim.mountpoint, sysfs_root=sysfs, pid_dir=pid_dir, prefix=PREFIX)
    now = [0.0]
    mon = CacheMonitor(backend, clock=lambda: now[0])
    refs = [InstanceRef(u, n) for u, n in NAMES.items()]
    mon_groups = os.path.join(sim.mountpoint, "mon_groups")
    last: dict[str, tuple[int, int]] = {}
    try:
        for n in range(1, 31):
            if n % 10 == 0:
                for name in os.listdir(mon_groups):  # as pqos -r does
                    os.rmdir(os.path.join(mon_groups, name))
            sim.advance(60.0)
            now[0] += 60.0
            caplog.clear()
            with caplog.at_level(logging.WARNING):
                r = mon.poll(refs)
            warnings = [rec.getMessage() for rec in caplog.records
                        if rec.levelno >= logging.WARNING]
            if n % 10 == 0:
                assert len(warnings) == 1, warnings
                assert "removed by another resctrl user (pqos -r" in warnings[0]
            else:
                assert warnings == []
            assert r.removed_by_others == 5 * (n // 10)
            assert set(r.instances) == set(UUIDS)
            # the groups made again get the counters as before
            assert _with_counters(r) == set(UUIDS) and _local(r) == {UUIDS[0]}
            for u in UUIDS:
                m = r.instances[u]
                assert m.mbm_total_bytes is not None
                t0, l0 = last.get(u, (0, 0))
                assert m.mbm_total_bytes >= t0 and (m.mbm_local_bytes or l0) >= l0
                last[u] = (m.mbm_total_bytes, m.mbm_local_bytes or 0)
                if n % 10 == 0:
                    assert m.mbm_total_rate is None  # new counters: no rate once
                elif n % 10 == 1 and n > 1:
                    assert m.mbm_total_rate == pytest.approx(TOTAL, rel=0.02)
    finally:
        mon.close()


def test_event_filter_written_by_another_tool(abmc_host: Any, caplog: Any) -> None:
    """Another tool writes an event_filter at t=330 s (cycle 6): the kernel
    reprograms the counters (they restart). The configuration is read every
    10th cycle: from then on the cycle carries the new filter for the
    samples' metadata, the values have new keys, and the cumulative meter
    never went back."""
    import logging

    new_filter = "local_reads,remote_reads"
    sim, sysfs, pid_dir = abmc_host({"faults": [
        {"at": 330, "action": "event_filter", "event": "mbm_total_bytes",
         "value": new_filter}]})
    backend = ResctrlBackend(sim.mountpoint, sysfs_root=sysfs, pid_dir=pid_dir, prefix=PREFIX)
    now = [0.0]
    mon = CacheMonitor(backend, clock=lambda: now[0])
    refs = [InstanceRef(u, n) for u, n in NAMES.items()]
    last: dict[str, int] = {}
    configs = []
    try:
        with caplog.at_level(logging.WARNING):
            for _ in range(15):
                sim.advance(60.0)
                now[0] += 60.0
                r = mon.poll(refs)
                assert r.mbm_config is not None
                configs.append(r.mbm_config["mbm_total_bytes"])
                for u in _with_counters(r):
                    v = r.instances[u].mbm_total_bytes
                    assert v is not None and v >= last.get(u, 0)
                    last[u] = v
        assert configs[:9] == [abmc.DEFAULT_FILTERS["mbm_total_bytes"]] * 9
        assert configs[9:] == [new_filter] * 6
        assert backend.mbm_config.changes == 1
        assert [rec for rec in caplog.records if "configuration changed" in rec.getMessage()]
        assert _with_counters(r) == set(UUIDS)
    finally:
        mon.close()


def test_churn_keeps_holders_and_serves_waiters(abmc_host: Any) -> None:
    """Instances come and go over 100 cycles (a fixed pattern): a present
    holder never loses a counter (no flapping), a free counter never stays
    free while an instance waits, bandwidth is None exactly when the reason
    says so, occupancy is always there, cumulative meters never go back."""
    sim, sysfs, pid_dir = abmc_host({})
    backend = ResctrlBackend(sim.mountpoint, sysfs_root=sysfs, pid_dir=pid_dir, prefix=PREFIX)
    now = [0.0]
    mon = CacheMonitor(backend, clock=lambda: now[0])
    events = (("mbm_total_bytes", "mbm_total_bytes"), ("mbm_local_bytes", "mbm_local_bytes"))
    prev: CycleResult | None = None
    present_before: set[str] = set()
    waits = served = 0
    try:
        for n in range(100):
            present = {u for i, u in enumerate(UUIDS) if (n // (3 + i)) % 3 != 2}
            sim.advance(60.0)
            now[0] += 60.0
            r = mon.poll([InstanceRef(u, NAMES[u]) for u in UUIDS if u in present])
            assert set(r.instances) == present
            for u in present:
                m = r.instances[u]
                assert m.occupancy
                for field, event in events:
                    value = getattr(m, field)
                    assert (value is None) == (event in r.unmonitored.get(u, "")), (n, u)
                    if prev is not None and u in present_before:
                        before = getattr(prev.instances[u], field)
                        if before is not None:  # a holder keeps it, and it never goes back
                            assert value is not None and value >= before, (n, u, field)
                        elif value is not None:
                            served += 1  # a waiter got a counter
            assert r.mbm_counters_available is not None
            if r.mbm_counters_available[0]:
                assert not r.unmonitored, (n, r.unmonitored)
            waits += bool(r.unmonitored)
            prev, present_before = r, present
        # the pattern did exhaust the counters and free them again
        assert waits > 20 and served > 5, (waits, served)
        assert backend.mbm is not None and backend.mbm.plans > 10
    finally:
        mon.close()


def test_assign_mode_switched_by_another_tool(abmc_host: Any) -> None:
    """Another tool switches to ``default`` at t=330 s (cycle 6) and back to
    ``mbm_event`` at t=630 s (cycle 11); each switch drops every assignment
    and restarts the counters. The backend follows: no counter meters and
    every domain read in ``default``; counters assigned again after the
    switch back; the cumulative meters never go back."""
    sim, sysfs, pid_dir = abmc_host({"faults": [
        {"at": 330, "action": "assign_mode", "value": "default"},
        {"at": 630, "action": "assign_mode", "value": "mbm_event"}]})
    backend = ResctrlBackend(sim.mountpoint, sysfs_root=sysfs, pid_dir=pid_dir, prefix=PREFIX)
    now = [0.0]
    mon = CacheMonitor(backend, clock=lambda: now[0])
    refs = [InstanceRef(u, n) for u, n in NAMES.items()]
    last: dict[str, int] = {}
    modes = []
    try:
        for n in range(1, 16):
            sim.advance(60.0)
            now[0] += 60.0
            r = mon.poll(refs)
            assert r.mbm_config is not None
            modes.append((r.mbm_config["mode"], r.mbm_counters is not None))
            for u in UUIDS:
                m = r.instances[u]
                assert m.occupancy
                if m.mbm_total_bytes is not None:
                    assert m.mbm_total_bytes >= last.get(u, 0), (n, u)
                    last[u] = m.mbm_total_bytes
            if n in (3, 8, 14):
                assert _with_counters(r) == set(UUIDS)
        assert modes[:5] == [("mbm_event", True)] * 5
        assert modes[5:10] == [("default", False)] * 5
        assert modes[10:] == [("mbm_event", True)] * 5
        assert backend.mbm_config.changes == 2
    finally:
        mon.close()
