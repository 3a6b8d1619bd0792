"""MBM counters in mbm_event mode: the backend's cycle on fixture trees of a
6.18 AMD host (the kernel's side of mkdir, rmdir and assignment writes
done by AssignKernelOps)."""

from __future__ import annotations

import errno
import os
from typing import Any

import pytest

from ceilometer_cmt.backends.resctrl import assign_files
from ceilometer_cmt.backends.resctrl.backend import RELIST, ResctrlBackend
from ceilometer_cmt.readings import InstanceRef
from ceilometer_cmt.simulator.topology import get_topology
from ceilometer_cmt.testing import mbm_assign_tree as abmc
from ceilometer_cmt.testing.kernel_trees import build_proc, build_sysfs, qemu_cmdline, set_value

A = "aaaaaaaa-1111-4111-8111-111111111111"
B = "bbbbbbbb-2222-4222-8222-222222222222"
C = "cccccccc-3333-4333-8333-333333333333"


class AbmcHost:
    """Fixture trees of preset amd-abmc (2 L3 domains, CPUs 0-7 and 8-15)
    with ``num_cntrs`` counters per domain, and a fake /proc."""

    def __init__(self, tmp: str, num_cntrs: int) -> None:
        self.topo = get_topology("amd-abmc")
        self.sysfs = build_sysfs(os.path.join(tmp, "sys"), self.topo)
        self.root = abmc.build_abmc_resctrl(os.path.join(tmp, "resctrl"), self.topo,
                                            num_cntrs=num_cntrs)
        self.proc = os.path.join(tmp, "proc")
        self.pid_dir = os.path.join(tmp, "run")
        os.makedirs(self.pid_dir)
        self.ops = abmc.AssignKernelOps(self.root, self.topo, self.proc, num_cntrs=num_cntrs)

    def qemu(self, name: str, pid: int, cpus: str | None) -> None:
        build_proc(self.proc, pid, qemu_cmdline(name), [pid])
        if cpus is not None:
            abmc.set_affinity(self.proc, pid, pid, cpus)
        with open(os.path.join(self.pid_dir, name + ".pid"), "w") as f:
            f.write(f"{pid}\n")

    def backend(self) -> ResctrlBackend:
        return ResctrlBackend(self.root, sysfs_root=self.sysfs, proc_root=self.proc,
                              pid_dir=self.pid_dir, verify_mount=False, ops=self.ops)

    def group(self, uuid: str) -> str:
        return os.path.join(self.root, "mon_groups", "ceilometer-" + uuid)


@pytest.fixture
def abmc_host(tmp_path: Any) -> AbmcHost:
    return AbmcHost(str(tmp_path), num_cntrs=4)  # the root holds 2 per domain: 2 free


def test_counters_only_where_the_threads_may_run(abmc_host: AbmcHost) -> None:
    h = abmc_host
    h.qemu("instance-a", 100, "8-9")  # domain 1 only
    b = h.backend()
    assert b.mbm is not None
    cycle = b.sync([InstanceRef(A, "instance-a")])
    # mkdir assigned total and local in both domains; domain 0's went back
    assert assign_files.read_assignments(h.group(A)) == {
        "mbm_total_bytes": {0: False, 1: True}, "mbm_local_bytes": {0: False, 1: True}}
    assert assign_files.read_available_mbm_cntrs(h.root) == {0: 2, 1: 0}
    assert ("assign-line", "mbm_total_bytes:0=_\n") in h.ops.calls
    assert cycle.unmonitored == {}
    set_value(h.group(A), 1, "mbm_total_bytes", 5000)
    set_value(h.group(A), 0, "mbm_total_bytes", "Unassigned")
    reading = b.sync([InstanceRef(A, "instance-a")]).readings[A]
    # only the domain with a counter is read, under the key the group had
    assert reading.mbm_total == {"/1": 5000}
    assert set(reading.occupancy) == {0, 1}


def test_exhausted_counters_leave_bandwidth_none_with_a_reason(abmc_host: AbmcHost) -> None:
    h = abmc_host
    h.qemu("instance-a", 100, "8-9")
    h.qemu("instance-b", 200, "8-15")
    h.qemu("instance-c", 300, "0-3")
    b = h.backend()
    refs = [InstanceRef(A, "instance-a"), InstanceRef(B, "instance-b"),
            InstanceRef(C, "instance-c")]
    cycle = b.sync(refs)
    # A's mkdir took the two free counters of each domain, B's and C's none.
    # The plan counts what mkdir gave as free (the groups are new): totals
    # first, A then B in domain 1 and C in domain 0, then C's local.
    assert set(cycle.readings) == {A, B, C}
    ra, rb, rc = (cycle.readings[u] for u in (A, B, C))
    assert set(ra.mbm_total) == {"/1"}  # kept what mkdir gave: no reset
    assert set(rb.mbm_total) == {"/1~1"} and set(rc.mbm_total) == {"/0~1"}
    assert ra.mbm_local == rb.mbm_local == {"/unassigned": None}
    assert set(rc.mbm_local) == {"/0~1"}
    assert set(rb.occupancy) == {0, 1}  # occupancy is read all the same
    for u in (A, B):
        assert cycle.unmonitored[u].startswith("no MBM counter: mbm_local_bytes: ")
        assert "no free MBM counter in L3 domain(s) [1]" in cycle.unmonitored[u]
    assert C not in cycle.unmonitored
    assert assign_files.read_assignments(h.group(A)) == {
        "mbm_total_bytes": {0: False, 1: True}, "mbm_local_bytes": {0: False, 1: False}}
    # no flapping, no write, and the groups' files read only on their re-listing
    calls, reads = len(h.ops.calls), b.mbm.file_reads  # type: ignore[union-attr]
    for _ in range(3 * RELIST):
        again = b.sync(refs)
        assert again.unmonitored.keys() == {A, B}
    assert len(h.ops.calls) == calls
    assert b.mbm.file_reads - reads == 3 * len(refs)  # type: ignore[union-attr]

    # A leaves: its counter goes to B's local, newly assigned: a new key
    cycle = b.sync(refs[1:])
    assert cycle.unmonitored == {}
    assert cycle.readings[B].mbm_total == {"/1~1": 0}
    assert cycle.readings[B].mbm_local == {"/1~1": 0}


def test_a_counter_assigned_behind_our_back_is_a_reset(abmc_host: AbmcHost) -> None:
    """Someone releases and assigns our counter again: the count restarted,
    seen on the group's next re-read; the same assignment again is no reset."""
    h = abmc_host
    h.qemu("instance-a", 100, "8-9")
    b = h.backend()
    refs = [InstanceRef(A, "instance-a")]
    b.sync(refs)
    abmc.set_assignments(h.group(A), h.topo, {"mbm_local_bytes": {1}})  # total released
    assert abmc.recount(h.root, h.topo, 4) == {0: 2, 1: 1}
    for _ in range(RELIST):
        reading = b.sync(refs).readings[A]
    # the re-read saw total gone: the plan assigned it again, a new count
    assert set(reading.mbm_total) == {"/1~1"} and set(reading.mbm_local) == {"/1"}
    assert b.mbm is not None and b.mbm.resets == 1
    for _ in range(2 * RELIST):
        reading = b.sync(refs).readings[A]
    assert set(reading.mbm_total) == {"/1~1"} and b.mbm.resets == 1


def test_default_mode_reads_every_domain(tmp_path: Any) -> None:
    topo = get_topology("amd-abmc")
    root = abmc.build_abmc_resctrl(str(tmp_path / "resctrl"), topo, mode="default")
    h = AbmcHost.__new__(AbmcHost)
    h.topo, h.root = topo, root
    h.sysfs = build_sysfs(str(tmp_path / "sys"), topo)
    h.proc, h.pid_dir = str(tmp_path / "proc"), str(tmp_path / "run")
    os.makedirs(h.pid_dir)
    h.ops = abmc.AssignKernelOps(root, topo, h.proc)
    h.qemu("instance-a", 100, "8-9")
    b = h.backend()
    assert b.mbm is not None  # ABMC hardware, but not in mbm_event mode
    cycle = b.sync([InstanceRef(A, "instance-a")])
    assert set(cycle.readings[A].mbm_total) == {"/0", "/1"} and cycle.unmonitored == {}
    assert not any(c[0] == "assign" for c in h.ops.calls)
    assert (cycle.mbm_counters, cycle.mbm_counters_available) == (None, None)
    assert cycle.mbm_config == {"mode": "default", "mbm_total_bytes": "0=0x7f;1=0x7f",
                                "mbm_local_bytes": "0=0x15;1=0x15"}
    # another tool writes a BMEC mask: the counters restart, new keys
    with open(os.path.join(root, "info", "L3_MON", "mbm_local_bytes_config"), "w") as f:
        f.write("0=0x05;1=0x15\n")
    for _ in range(RELIST):
        cycle = b.sync([InstanceRef(A, "instance-a")])
    assert set(cycle.readings[A].mbm_local) == {"/0%1", "/1%1"}
    assert cycle.mbm_config is not None
    assert cycle.mbm_config["mbm_local_bytes"] == "0=0x05;1=0x15"


def test_a_counter_configuration_change_gives_new_keys(abmc_host: AbmcHost) -> None:
    """Another tool writes an event_filter: the counters restarted (the kernel
    reprograms them, event_filter_write()); seen on the next config read
    (every RELIST cycles), every MBM value gets a new key, and the cycle
    carries the configuration for the samples' metadata."""
    h = abmc_host
    h.qemu("instance-a", 100, "8-9")
    b = h.backend()
    refs = [InstanceRef(A, "instance-a")]
    cycle = b.sync(refs)
    assert cycle.mbm_config == {"mode": "mbm_event", **abmc.DEFAULT_FILTERS}
    assert set(cycle.readings[A].mbm_total) == {"/1"}
    with open(os.path.join(h.root, "info", "L3_MON", "event_configs", "mbm_total_bytes",
                           "event_filter"), "w") as f:
        f.write("local_reads,remote_reads\n")
    seen = []
    for _ in range(RELIST):
        cycle = b.sync(refs)
        seen.append(set(cycle.readings[A].mbm_total))
    assert seen[0] == {"/1"} and seen[-1] == {"/1%1"}  # read once per RELIST cycles
    assert cycle.mbm_config is not None
    assert cycle.mbm_config["mbm_total_bytes"] == "local_reads,remote_reads"
    assert set(cycle.readings[A].mbm_local) == {"/1%1"}
    assert b.mbm_config.changes == 1
    for _ in range(2 * RELIST):  # no change: the keys stay
        assert set(b.sync(refs).readings[A].mbm_total) == {"/1%1"}


class RefusingOps(abmc.AssignKernelOps):
    """The kernel side, behind a guard that refuses every assignment (as the
    privsep daemon's counter reserve does): ENOSPC, nothing written."""

    def write_assignments(self, group_path: str, lines: list[str]) -> list[tuple[str, int]]:
        self.calls.append(("refused", group_path))
        return [(line, errno.ENOSPC) for line in lines if line.rstrip().endswith("=e")] + \
            super().write_assignments(group_path, [
                line for line in lines if not line.rstrip().endswith("=e")])


def test_a_refused_assignment_is_not_retried_every_cycle(tmp_path: Any) -> None:
    h = AbmcHost(str(tmp_path), num_cntrs=4)
    h.ops = RefusingOps(h.root, h.topo, h.proc, num_cntrs=4)
    h.qemu("instance-a", 100, "0-15")  # both domains
    h.qemu("instance-b", 200, "0-15")
    b = h.backend()
    refs = [InstanceRef(A, "instance-a"), InstanceRef(B, "instance-b")]
    cycle = b.sync(refs)
    # A kept what mkdir gave it; B's assignments were refused
    assert set(cycle.readings[A].mbm_total) == {"/0", "/1"}
    assert cycle.readings[B].mbm_total == {"/unassigned": None}
    assert "assignment refused" in cycle.unmonitored[B]
    refused = sum(1 for c in h.ops.calls if c[0] == "refused")
    for _ in range(3 * RELIST):
        cycle = b.sync(refs)
        assert "assignment refused" in cycle.unmonitored[B]
    assert sum(1 for c in h.ops.calls if c[0] == "refused") == refused


def test_a_partial_holding_reads_no_partial_sum(abmc_host: AbmcHost) -> None:
    """A counter in one of the instance's two domains: its bandwidth is None
    (a sum over part of the domains would understate it), until both."""
    h = abmc_host
    h.qemu("instance-a", 100, "0-15")
    b = h.backend()
    refs = [InstanceRef(A, "instance-a")]
    assert set(b.sync(refs).readings[A].mbm_total) == {"/0", "/1"}
    assert b.mbm is not None
    t = b._tracked[A]
    t.mbm_held[""] = {"mbm_total_bytes": frozenset({0}),
                      "mbm_local_bytes": frozenset({0, 1})}  # as a refused write leaves it
    reading = b.sync(refs).readings[A]
    assert reading.mbm_total == {"/unassigned": None}
    assert set(reading.mbm_local) == {"/0", "/1"}


def test_cachetune_groups_get_counters_each(tmp_path: Any) -> None:
    """A real qemu stand-in (pinned to CPU 0, so L3 domain 0 on any machine)
    whose vCPU threads sit in libvirt's control group: our group there gets
    its own counters, under its own keys."""
    from ceilometer_cmt.testing.fakehost import StandInQemu
    from ceilometer_cmt.testing.kernel_trees import EVENTS, _group_files

    h = AbmcHost(str(tmp_path), num_cntrs=8)
    h.ops = abmc.AssignKernelOps(h.root, h.topo, "/proc", num_cntrs=8)
    q = StandInQemu("instance-1", h.pid_dir, extra_threads=2, cpus={0}).start()
    try:
        ctrl = os.path.join(h.root, "vcpus_0-1")
        _group_files(h.topo, ctrl, True, EVENTS)
        abmc.set_assignments(ctrl, h.topo, {})
        with open(os.path.join(ctrl, "tasks"), "w") as f:
            f.write("".join(f"{t}\n" for t in q.tids[1:]))
        b = ResctrlBackend(h.root, sysfs_root=h.sysfs, proc_root="/proc", pid_dir=h.pid_dir,
                           verify_mount=False, ops=h.ops)
        refs = [InstanceRef(A, "instance-1")]
        cycle = b.sync(refs)
        assert cycle.unmonitored == {}
        r = cycle.readings[A]
        assert set(r.mbm_total) == {"/0", "vcpus_0-1/0"}
        assert set(r.mbm_local) == {"/0", "vcpus_0-1/0"}
        mine = os.path.join(ctrl, "mon_groups", "ceilometer-" + A)
        for g in (h.group(A), mine):
            assert assign_files.read_assignments(g) == {
                ev: {0: True, 1: False} for ev in ("mbm_total_bytes", "mbm_local_bytes")}
        # 8 counters: the default group holds 2, ours 2 + 2 in domain 0
        assert assign_files.read_available_mbm_cntrs(h.root) == {0: 2, 1: 6}
    finally:
        q.stop()


def test_a_counter_released_behind_our_back_is_reported_and_taken_back(
        abmc_host: AbmcHost) -> None:
    """Another tool writes ``mbm_local_bytes:1=_`` to our group: the value
    reads Unassigned, which makes the backend read the group's file at once
    (not on its re-listing cycle): None with the reason this cycle, the
    counter assigned again the next (a new count, a new key)."""
    h = abmc_host
    h.qemu("instance-a", 100, "8-9")
    b = h.backend()
    refs = [InstanceRef(A, "instance-a")]
    assert set(b.sync(refs).readings[A].mbm_local) == {"/1"}
    abmc.set_assignments(h.group(A), h.topo, {"mbm_total_bytes": {1}})
    abmc.recount(h.root, h.topo, 4)
    set_value(h.group(A), 1, "mbm_local_bytes", "Unassigned")
    cycle = b.sync(refs)
    assert cycle.readings[A].mbm_local == {"/unassigned": None}
    assert set(cycle.readings[A].mbm_total) == {"/1"}
    assert cycle.unmonitored[A] == ("no MBM counter: mbm_local_bytes: released by another "
                                    "resctrl user (assigned again when free)")
    set_value(h.group(A), 1, "mbm_local_bytes", 0)  # what a new counter shows
    cycle = b.sync(refs)
    assert cycle.unmonitored == {}
    assert cycle.readings[A].mbm_local == {"/1~1": 0}
    assert abmc.held_by(h.group(A))["mbm_local_bytes"] == {1}


def test_the_plan_leaves_the_counters_the_writer_keeps_free(tmp_path: Any) -> None:
    """Through the privsep daemon, ``[cmt_privsep] mbm_counter_reserve``
    counters per domain stay free for other tools: the plan counts them as
    taken, so it asks for none of them (no refusal, nothing retried)."""
    tmp = str(tmp_path)
    h = AbmcHost(tmp, num_cntrs=6)  # the root holds 2 per domain: 4 free
    h.root = abmc.build_abmc_resctrl(os.path.join(tmp, "resctrl"), h.topo, num_cntrs=6,
                                     on_mkdir=False)
    h.ops.kept = {0: 2, 1: 2}
    for n, name in enumerate(("instance-a", "instance-b")):
        h.qemu(name, 100 + n, "8-9")  # domain 1 only
    b = h.backend()
    refs = [InstanceRef(A, "instance-a"), InstanceRef(B, "instance-b")]
    for _ in range(2 * RELIST):
        cycle = b.sync(refs)
        assert assign_files.read_available_mbm_cntrs(h.root) == {0: 4, 1: 2}
    # 2 usable counters in domain 1: both go to total (total before local)
    held = {u: assign_files.read_assignments(h.group(u)) for u in (A, B)}
    assert sorted(sum(d[1] for d in g.values()) for g in held.values()) == [1, 1]
    assert all(g["mbm_total_bytes"][1] for g in held.values())
    assert not any(c[0] == "assign-line" and c[1].endswith("=e\n") and
                   c[1].startswith("mbm_local") for c in h.ops.calls)
    assert all("MBM counter" in cycle.unmonitored.get(u, "") or u in cycle.readings
               for u in (A, B))


@pytest.mark.parametrize("events,held", [
    ({"llc_occupancy"}, {"mbm_total_bytes": {0: False, 1: False},
                         "mbm_local_bytes": {0: False, 1: False}}),
    ({"llc_occupancy", "mbm_total_bytes"}, {"mbm_total_bytes": {0: False, 1: True},
                                            "mbm_local_bytes": {0: False, 1: False}}),
    (None, {"mbm_total_bytes": {0: False, 1: True}, "mbm_local_bytes": {0: False, 1: True}}),
])
def test_counters_of_events_no_polled_meter_needs_go_back(
        abmc_host: AbmcHost, events: set[str] | None,
        held: dict[str, dict[int, bool]]) -> None:
    """mkdir assigns every MBM event (mbm_assign_on_mkdir); the counters of
    the events the polled meters do not need are released at once, and
    their files are not read."""
    h = abmc_host
    h.qemu("instance-a", 100, "8-9")  # domain 1 only
    b = ResctrlBackend(h.root, sysfs_root=h.sysfs, proc_root=h.proc, pid_dir=h.pid_dir,
                       verify_mount=False, ops=h.ops, events=events)
    refs = [InstanceRef(A, "instance-a")]
    b.sync(refs)
    cycle = b.sync(refs)
    assert assign_files.read_assignments(h.group(A)) == held
    free = {d: 2 - sum(doms[d] for doms in held.values()) for d in (0, 1)}
    assert assign_files.read_available_mbm_cntrs(h.root) == free
    assert cycle.unmonitored == {}
    reading = cycle.readings[A]
    assert bool(reading.mbm_total) == held["mbm_total_bytes"][1]
    assert bool(reading.mbm_local) == held["mbm_local_bytes"][1]


# ------------------------------------------------- the guard's caps: idle groups
CAP = "ceilometer-cap-25"


def _tasks(group: str, tids: set[int]) -> None:
    with open(os.path.join(group, "tasks"), "w") as f:
        f.write("".join(f"{t}\n" for t in sorted(tids)))


def cap(h: AbmcHost, uuid: str, pid: int) -> str:
    """What the guard does: a cap control group, our monitor group made in
    it (the kernel assigns what is free on mkdir), the threads moved there.
    Returns the new monitor group."""
    from ceilometer_cmt.testing.kernel_trees import EVENTS, _group_files

    ctrl = os.path.join(h.root, CAP)
    _group_files(h.topo, ctrl, True, EVENTS)
    abmc.set_assignments(ctrl, h.topo, {})
    abmc.recount(h.root, h.topo, h.ops.num_cntrs)
    mon = os.path.join(ctrl, "mon_groups", "ceilometer-" + uuid)
    h.ops.mkdir(mon)
    _tasks(h.group(uuid), set())
    _tasks(ctrl, {pid})
    _tasks(mon, {pid})
    return mon


def release(h: AbmcHost, uuid: str, pid: int) -> None:
    """The guard's release: the threads back, the cap group removed (its
    groups' counters freed)."""
    import shutil

    _tasks(h.group(uuid), {pid})
    shutil.rmtree(os.path.join(h.root, CAP))
    abmc.recount(h.root, h.topo, h.ops.num_cntrs)


def test_an_idle_groups_counters_follow_the_threads_and_meters_stay_monotonic(
        abmc_host: AbmcHost) -> None:
    """No free counter in domain 1: capped, the default group (idle now)
    gives its counters to our group in the cap group; released, the default
    group gets them again, newly assigned: new keys, the cumulative meter
    goes on without counting anything twice; then nothing churns."""
    from ceilometer_cmt.counters import ByteCounter

    h = abmc_host
    h.qemu("instance-a", 100, "8-9")  # domain 1 only
    b = h.backend()
    refs = [InstanceRef(A, "instance-a")]
    meter = ByteCounter()
    b.sync(refs)
    set_value(h.group(A), 1, "mbm_total_bytes", 5000)
    first = b.sync(refs).readings[A]
    assert first.mbm_total == {"/1": 5000}
    assert meter.update(first.mbm_total, 1.0).cumulative == 5000
    assert assign_files.read_available_mbm_cntrs(h.root) == {0: 2, 1: 0}

    mon = cap(h, A, 100)
    set_value(mon, 1, "mbm_total_bytes", 300)  # counted since its assignment
    set_value(mon, 1, "llc_occupancy", 7000)
    set_value(h.group(A), 1, "llc_occupancy", 9_000_000)  # stale lines
    calls = len(h.ops.calls)
    cycle = b.sync(refs)
    assert cycle.unmonitored == {}
    assert abmc.held_by(h.group(A)) == {"mbm_total_bytes": set(), "mbm_local_bytes": set()}
    assert abmc.held_by(mon) == {"mbm_total_bytes": {1}, "mbm_local_bytes": {1}}
    # the idle group's releases were written before the cap group's assignments
    writes = [c for c in h.ops.calls[calls:] if c[0] == "assign"]
    assert writes.index(("assign", h.group(A))) < len(writes) - 1
    assert writes[-1] == ("assign", mon)
    r = cycle.readings[A]
    assert r.mbm_total == {f"{CAP}/1~1": 300}  # no None for the idle group
    assert set(r.mbm_local) == {f"{CAP}/1~1"}
    assert r.occupancy[1] == 7000
    assert meter.update(r.mbm_total, 2.0).cumulative == 5300

    release(h, A, 100)
    set_value(h.group(A), 1, "mbm_total_bytes", 40)  # a new assignment restarted it
    cycle = b.sync(refs)
    assert cycle.unmonitored == {}
    assert abmc.held_by(h.group(A)) == {"mbm_total_bytes": {1}, "mbm_local_bytes": {1}}
    r = cycle.readings[A]
    assert r.mbm_total == {"/1~1": 40}  # never "/1" again: not counted twice
    assert meter.update(r.mbm_total, 3.0).cumulative == 5340
    calls, resets = len(h.ops.calls), b.mbm.resets  # type: ignore[union-attr]
    for _ in range(3 * RELIST):
        assert b.sync(refs).unmonitored == {}
    assert h.ops.calls[calls:] == [] and b.mbm.resets == resets  # type: ignore[union-attr]


def test_a_waiting_instance_takes_an_idle_groups_counters(tmp_path: Any) -> None:
    """A capped with a free counter for its cap group: its idle default group
    keeps its own while nobody lacks one; B arrives and finds none free in
    domain 1: it takes the idle group's (A's bandwidth is still whole)."""
    h = AbmcHost(str(tmp_path), num_cntrs=6)  # the root holds 2 per domain: 4 free
    h.qemu("instance-a", 100, "8-9")
    h.qemu("instance-b", 200, "8-9")
    b = h.backend()
    b.sync([InstanceRef(A, "instance-a")])
    mon = cap(h, A, 100)
    refs = [InstanceRef(A, "instance-a")]
    cycle = b.sync(refs)
    assert cycle.unmonitored == {}
    assert abmc.held_by(h.group(A))["mbm_total_bytes"] == {1}  # kept: nobody lacks one
    assert abmc.held_by(mon)["mbm_total_bytes"] == {1}
    assert set(cycle.readings[A].mbm_total) == {"/1", f"{CAP}/1"}
    assert assign_files.read_available_mbm_cntrs(h.root) == {0: 4, 1: 0}
    refs.append(InstanceRef(B, "instance-b"))
    cycle = b.sync(refs)
    assert cycle.unmonitored == {}
    assert abmc.held_by(h.group(A)) == {"mbm_total_bytes": set(), "mbm_local_bytes": set()}
    assert abmc.held_by(h.group(B))["mbm_total_bytes"] == {1}
    assert set(cycle.readings[A].mbm_total) == {f"{CAP}/1"}
    assert None not in cycle.readings[A].mbm_total.values()
    assert set(cycle.readings[B].mbm_total) == {"/1~1"}


def test_cap_and_release_back_and_forth_keeps_the_default_groups_counters(
        tmp_path: Any) -> None:
    """Counters to spare: each cap and release writes only to the cap
    group; the default group keeps its counters and keys throughout, and
    the cumulative meter never goes back."""
    from ceilometer_cmt.counters import ByteCounter

    h = AbmcHost(str(tmp_path), num_cntrs=8)
    h.qemu("instance-a", 100, "8-9")
    b = h.backend()
    refs = [InstanceRef(A, "instance-a")]
    b.sync(refs)
    meter, last, value = ByteCounter(), 0, 0
    for rnd in range(6):
        capped = rnd % 2 == 0
        mon = cap(h, A, 100) if capped else None
        if not capped:
            release(h, A, 100)
        calls = len(h.ops.calls)
        value += 1000
        set_value(h.group(A), 1, "mbm_total_bytes", value)
        for _ in range(2):
            cycle = b.sync(refs)
            assert cycle.unmonitored == {}
            total = cycle.readings[A].mbm_total
            assert total["/1"] == value, (rnd, total)
            got = meter.update(total, float(rnd * 2 + _)).cumulative
            assert got is not None and got >= last
            last = got
        assert ("assign", h.group(A)) not in h.ops.calls[calls:]
        assert abmc.held_by(h.group(A)) == {"mbm_total_bytes": {1}, "mbm_local_bytes": {1}}
        if mon is not None:
            assert {k for k in total if k.startswith(CAP)} == {f"{CAP}/1" + (
                f"#{rnd // 2}" if rnd else "")}
    assert b.mbm is not None and b.mbm.resets == 0


def test_threads_moved_back_into_a_kept_cap_group_take_their_counters_back(
        abmc_host: AbmcHost) -> None:
    """Threads moved back without the cap group's removal: seen on the
    instance's re-listing, where the cap group turns idle and the default
    group takes its counters (once: a new key, then no churn)."""
    h = abmc_host
    h.qemu("instance-a", 100, "8-9")
    b = h.backend()
    refs = [InstanceRef(A, "instance-a")]
    b.sync(refs)
    mon = cap(h, A, 100)
    b.sync(refs)
    assert abmc.held_by(mon)["mbm_total_bytes"] == {1}
    _tasks(mon, set())
    _tasks(os.path.join(h.root, CAP), set())
    _tasks(h.group(A), {100})
    for _ in range(RELIST):
        cycle = b.sync(refs)
    assert cycle.unmonitored == {}
    assert abmc.held_by(mon) == {"mbm_total_bytes": set(), "mbm_local_bytes": set()}
    assert abmc.held_by(h.group(A)) == {"mbm_total_bytes": {1}, "mbm_local_bytes": {1}}
    assert set(cycle.readings[A].mbm_total) == {"/1~1"}
    calls = len(h.ops.calls)
    for _ in range(2 * RELIST):
        assert b.sync(refs).unmonitored == {}
    assert h.ops.calls[calls:] == []
