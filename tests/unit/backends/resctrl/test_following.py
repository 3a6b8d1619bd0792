"""following: the backend follows the guard's cap and release at once, on
kernel-format fixture trees with real stand-in processes (the guard's moves
are done here as the kernel would show them)."""

from __future__ import annotations

import logging
import os
import shutil

import pytest

from ceilometer_cmt.backends.resctrl import following, fs
from ceilometer_cmt.backends.resctrl.monitored_instance import MonitoredInstance
from ceilometer_cmt.readings import Allocation, InstanceRef
from ceilometer_cmt.testing import kernel_trees
from ceilometer_cmt.testing.kernel_trees import set_value

U1 = "11111111-1111-4111-8111-111111111111"
U2 = "22222222-2222-4222-8222-222222222222"
P = "ceilometer-"
CAP = f"{P}cap-25"
REFS = [InstanceRef(U1, "instance-00000001"), InstanceRef(U2, "instance-00000002")]


def mon(host, uuid, ctrl=""):  # type: ignore[no-untyped-def]
    return os.path.join(fs.mon_groups_path(host.resctrl, ctrl), P + uuid)


def write_tasks(path: str, tids: set[int]) -> None:
    with open(os.path.join(path, "tasks"), "w") as f:
        f.write("".join(f"{t}\n" for t in sorted(tids)))


def cap(host, tids):  # type: ignore[no-untyped-def]
    """What the guard does: a cap group with 5 of the 20 ways, the threads
    moved there and into the agent-named monitor group under it."""
    ctrl = os.path.join(host.resctrl, CAP)
    kernel_trees._group_files(host.topo, ctrl, True, host.ops.features)
    with open(os.path.join(ctrl, "schemata"), "w") as f:
        f.write("    L3:0=0001f;1=0001f\n")
    kernel_trees._group_files(host.topo, mon(host, U1, CAP), False, host.ops.features)
    write_tasks(mon(host, U1), set())
    write_tasks(ctrl, tids)
    write_tasks(mon(host, U1, CAP), tids)


def release(host, tids):  # type: ignore[no-untyped-def]
    write_tasks(mon(host, U1), tids)
    shutil.rmtree(os.path.join(host.resctrl, CAP))


@pytest.fixture
def two(host):  # type: ignore[no-untyped-def]
    qs = [host.start_qemu("instance-00000001", extra_threads=1),
          host.start_qemu("instance-00000002")]
    return host, set(qs[0].tids)


def test_a_cap_is_followed_at_once_and_a_release_is_no_removal(
        two, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    host, tids = two
    b = host.backend()
    first = b.sync(REFS)
    assert first.capped == 0
    assert first.allocation[U1] == Allocation(100.0, {0: 100.0, 1: 100.0})
    set_value(mon(host, U1), 0, "mbm_total_bytes", 1000)
    cap(host, tids)
    # the old group keeps stale lines; the new one holds the threads
    set_value(mon(host, U1), 0, "llc_occupancy", 9_000_000)
    set_value(mon(host, U1, CAP), 0, "llc_occupancy", 2_000_000)
    set_value(mon(host, U1, CAP), 0, "mbm_total_bytes", 70)
    calls = len(host.ops.calls)
    capped = b.sync(REFS)
    r = capped.readings[U1]
    assert r.occupancy == {0: 2_000_000, 1: 0}  # no stale lines, no 0 for the instance
    assert r.mbm_total == {"/0": 1000, "/1": 0, f"{CAP}/0": 70, f"{CAP}/1": 0}
    assert capped.capped == 1 and capped.removed_by_others == 0
    assert capped.allocation[U1] == Allocation(25.0, {0: 25.0, 1: 25.0})
    assert capped.allocation[U2].percent == 100.0
    assert host.ops.calls[calls:] == []  # nothing to write: the guard placed them
    caplog.clear()
    release(host, tids)
    set_value(mon(host, U1), 0, "llc_occupancy", 3_000_000)
    with caplog.at_level(logging.INFO):
        released = b.sync(REFS)
    assert released.removed_by_others == 0 and b.removed_by_others == 0
    assert not [x for x in caplog.records if x.levelno >= logging.WARNING]
    assert "let go with the cap group" in caplog.text
    assert released.readings[U1].occupancy == {0: 3_000_000, 1: 0}
    assert set(released.readings[U1].mbm_total) == {"/0", "/1"}
    assert released.capped == 0
    assert released.allocation[U1].percent == 100.0
    assert host.ops.calls[calls:] == []
    # capped again: the new group's counters get new keys (never counted twice)
    cap(host, tids)
    again = b.sync(REFS)
    assert {k for k in again.readings[U1].mbm_total if k.startswith(CAP)} == {
        f"{CAP}/0#1", f"{CAP}/1#1"}


def test_a_release_between_the_listing_and_the_read_is_no_removal(
        two, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    """The guard releases after the agent listed the groups: the cap group's
    files are gone when read (no kept fds here: opened by path)."""
    host, tids = two
    b = host.backend(fd_budget=0)
    b.sync(REFS)
    cap(host, tids)
    b.sync(REFS)
    assert CAP in b._tracked[U1].groups
    stale = fs.list_groups(host.resctrl)
    release(host, tids)
    set_value(mon(host, U1), 0, "llc_occupancy", 3_000_000)
    monkeypatch.setattr(fs, "list_groups", lambda root: {k: list(v) for k, v in stale.items()})
    with caplog.at_level(logging.INFO):
        cycle = b.sync(REFS)
    assert "vanished with its cap group" in caplog.text  # found at the read
    assert not [x for x in caplog.records if x.levelno >= logging.WARNING]
    assert cycle.removed_by_others == 0 and cycle.capped == 0
    assert CAP not in b._tracked[U1].groups
    assert cycle.readings[U1].occupancy == {0: 3_000_000, 1: 0}
    assert cycle.allocation[U1].percent == 100.0


def test_a_group_removed_with_another_tools_control_group_is_counted(two) -> None:  # type: ignore[no-untyped-def]
    host, tids = two
    b = host.backend()
    b.sync(REFS)
    other = "COS1"  # not a cap group of ours: someone else's removal
    kernel_trees._group_files(host.topo, os.path.join(host.resctrl, other), True,
                              host.ops.features)
    kernel_trees._group_files(host.topo, mon(host, U1, other), False, host.ops.features)
    write_tasks(mon(host, U1, other), tids)
    write_tasks(mon(host, U1), set())
    b.sync(REFS)  # adopted at once
    assert other in b._tracked[U1].groups
    shutil.rmtree(os.path.join(host.resctrl, other))
    assert b.sync(REFS).removed_by_others == 1


def test_schemata_read_only_when_the_listing_changes(two) -> None:  # type: ignore[no-untyped-def]
    host, tids = two
    b = host.backend()
    b.sync(REFS)
    reads = b.allocations.reads
    assert reads == 1  # the default group's, once for both instances
    for _ in range(5):
        b.sync(REFS)
    assert b.allocations.reads <= reads + 1  # at most the periodic re-read
    cap(host, tids)
    before = b.allocations.reads
    b.sync(REFS)
    assert b.allocations.reads == before + 2  # the listing changed: both groups


def test_no_cat_no_allocation(host) -> None:  # type: ignore[no-untyped-def]
    host.start_qemu("instance-00000001")
    os.remove(os.path.join(host.resctrl, "info", "L3", "cbm_mask"))
    b = host.backend()
    cycle = b.sync(REFS[:1])
    assert U1 in cycle.readings
    assert cycle.allocation == {} and cycle.capped == 0
    assert b.allocations.reads == 0


def test_elsewhere_and_cap_groups_left(tmp_path) -> None:  # type: ignore[no-untyped-def]
    groups = {"": [P + U1, "other"], CAP: [P + U2, "x"], "qemu-1-vcpus_0": [P + U1]}
    assert following.elsewhere(groups, P) == {P + U2: [CAP], P + U1: ["qemu-1-vcpus_0"]}
    gone = [CAP, f"{P}cap-50", "qemu-1-vcpus_0"]
    assert following.left_with_cap_group(P, gone, {"": []}, "") == [CAP, f"{P}cap-50"]
    assert following.left_with_cap_group(P, gone, {CAP: []}, "") == [f"{P}cap-50"]
    (tmp_path / CAP).mkdir()
    assert following.left_with_cap_group(P, gone, None, str(tmp_path)) == [f"{P}cap-50"]


def test_members_marks_groups_without_threads_idle(tmp_path) -> None:  # type: ignore[no-untyped-def]
    t = MonitoredInstance(U1, "instance-00000001")
    for ctrl, tids in (("", set()), (CAP, {7, 8})):
        path = tmp_path / (ctrl or "root")
        path.mkdir()
        write_tasks(str(path), tids)
        t.groups[ctrl] = str(path)
    following.members(t)
    assert t.assigned == {7, 8} and t.idle == {""}
