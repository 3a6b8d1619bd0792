"""The resctrl backend's lifecycle on kernel-format fixture trees with real processes."""

from __future__ import annotations

import errno
import logging
import os
import shutil

import pytest

from ceilometer_cmt.backends.resctrl import fs
from ceilometer_cmt.backends.resctrl.backend import ResctrlBackend
from ceilometer_cmt.errors import BackendUnavailable
from ceilometer_cmt.monitor import CacheMonitor
from ceilometer_cmt.readings import InstanceRef
from ceilometer_cmt.simulator.topology import get_topology
from ceilometer_cmt.testing.kernel_trees import build_proc, file_calls, qemu_cmdline, set_value
from tests.unit.backends.resctrl.test_values import _node_files_only, _open_under

AMD_CCX = get_topology("amd-ccx")
SNC = get_topology("snc")

U1 = "11111111-1111-4111-8111-111111111111"
U2 = "22222222-2222-4222-8222-222222222222"


def group(host, uuid, ctrl=""):  # type: ignore[no-untyped-def]
    base = os.path.join(host.resctrl, ctrl) if ctrl else host.resctrl
    return os.path.join(base, "mon_groups", "ceilometer-" + uuid)


def test_creates_group_assigns_every_thread_and_reads(host):  # type: ignore[no-untyped-def]
    q = host.start_qemu("instance-00000001", extra_threads=2)
    b = host.backend()
    cycle = b.sync([InstanceRef(U1, "instance-00000001")])
    assert cycle.unmonitored == {}
    g = group(host, U1)
    assert fs.read_tasks(g) == set(q.tids) and len(q.tids) == 3
    assert b.mkdirs == 1 and b.writes == 3
    # the kernel fills values; the backend reads exactly them
    set_value(g, 0, "llc_occupancy", 1048576)
    set_value(g, 1, "llc_occupancy", 2097152)
    set_value(g, 0, "mbm_total_bytes", 1000)
    set_value(g, 1, "mbm_total_bytes", 500)
    r = b.sync([InstanceRef(U1, "instance-00000001")]).readings[U1]
    assert r.occupancy == {0: 1048576, 1: 2097152}
    assert r.mbm_total == {"/0": 1000, "/1": 500}
    assert r.mbm_local == {"/0": 0, "/1": 0}
    # 1 default group + 1 monitor group
    assert b.sync([InstanceRef(U1, "instance-00000001")]).monitors_used == 2


def test_steady_state_does_no_mkdir_and_no_write(host):  # type: ignore[no-untyped-def]
    host.start_qemu("instance-00000001", extra_threads=1)
    b = host.backend()
    refs = [InstanceRef(U1, "instance-00000001")]
    b.sync(refs)
    calls = len(host.ops.calls)
    for _ in range(5):
        b.sync(refs)
    assert host.ops.calls[calls:] == []
    assert b.mkdirs == 1


def _fake_proc_backend(host):  # type: ignore[no-untyped-def]
    """A backend on a fake proc tree where "instance-a" is qemu 4242 (one thread);
    returns (backend, proc root). Such a tree gives no pidfd."""
    proc = os.path.join(host.root, "proc")
    build_proc(proc, 4242, qemu_cmdline("instance-a"), [4242])
    with open(os.path.join(host.pid_dir, "instance-a.pid"), "w") as f:
        f.write("4242\n")
    host.ops.proc_root = proc
    return host.backend(proc_root=proc), proc


def test_new_thread_is_written_once(host):  # type: ignore[no-untyped-def]
    # A stand-in whose extra thread appears only in /proc: use a fake proc tree.
    b, proc = _fake_proc_backend(host)
    refs = [InstanceRef(U1, "instance-a")]
    b.sync(refs)
    assert fs.read_tasks(group(host, U1)) == {4242}
    build_proc(proc, 4242, qemu_cmdline("instance-a"), [4242, 4250])
    b.sync(refs)
    assert fs.read_tasks(group(host, U1)) == {4242, 4250}
    assert b.writes == 2 and b.mkdirs == 1


def test_without_pidfds_the_tasks_files_are_read_every_relist_cycle_only(
        host, monkeypatch):  # type: ignore[no-untyped-def]
    """A fixture proc tree gives no pidfd: the backend checks the pidfile and the
    start time each cycle, but reads its groups' tasks files (a walk over every
    thread of the host in the kernel) only on its periodic re-listing."""
    from ceilometer_cmt.backends.resctrl import backend as resctrl_backend

    b, _ = _fake_proc_backend(host)
    refs = [InstanceRef(U1, "instance-a")]
    b.sync(refs)
    reads: list[str] = []
    real = fs.read_tasks
    monkeypatch.setattr(fs, "read_tasks", lambda p: reads.append(p) or real(p))
    for _ in range(3 * resctrl_backend.RELIST):
        assert U1 in b.sync(refs).readings
    assert len(reads) == 3
    assert fs.read_tasks(group(host, U1)) == {4242}


def test_instance_that_leaves_loses_its_group(host):  # type: ignore[no-untyped-def]
    host.start_qemu("instance-1")
    host.start_qemu("instance-2")
    b = host.backend()
    b.sync([InstanceRef(U1, "instance-1"), InstanceRef(U2, "instance-2")])
    assert os.path.isdir(group(host, U1)) and os.path.isdir(group(host, U2))
    b.sync([InstanceRef(U2, "instance-2")])
    assert not os.path.exists(group(host, U1))
    assert os.path.isdir(group(host, U2))


def test_stopped_process_is_unmonitored_with_reason(host):  # type: ignore[no-untyped-def]
    q = host.start_qemu("instance-1")
    b = host.backend()
    b.sync([InstanceRef(U1, "instance-1")])
    q.stop()
    cycle = b.sync([InstanceRef(U1, "instance-1")])
    assert U1 not in cycle.readings
    assert "not running" in cycle.unmonitored[U1] or "gone" in cycle.unmonitored[U1]


def test_adopts_own_groups_and_sweeps_orphans_never_foreign(host):  # type: ignore[no-untyped-def]
    q = host.start_qemu("instance-1")
    b = host.backend()
    b.sync([InstanceRef(U1, "instance-1")])
    set_value(group(host, U1), 0, "mbm_total_bytes", 777)
    # an orphan of ours (instance gone), a foreign group, a non-uuid group of ours
    orphan = group(host, U2)
    host.ops.mkdir(orphan)
    foreign = os.path.join(host.resctrl, "mon_groups", "pqos-42")
    host.ops.mkdir(foreign)
    odd = os.path.join(host.resctrl, "mon_groups", "ceilometer-not-a-uuid")
    host.ops.mkdir(odd)
    host.ops.calls.clear()
    # a new agent process starts
    b2 = host.backend()
    r = b2.sync([InstanceRef(U1, "instance-1")])
    assert r.readings[U1].mbm_total["/0"] == 777  # the counter continues
    assert r.monitors_used == 3  # default group, ours, the foreign one: the swept ones gone
    assert b2.mkdirs == 0 and b2.writes == 0  # adopted, threads already inside
    assert not os.path.exists(orphan) and not os.path.exists(odd)
    assert os.path.isdir(foreign)
    assert sorted(c for c in host.ops.calls if c[0] == "rmdir") == sorted(
        [("rmdir", orphan), ("rmdir", odd)])
    assert fs.read_tasks(group(host, U1)) == set(q.tids)


def test_a_group_removed_by_someone_else_just_before_our_rmdir_is_not_counted(
        host) -> None:  # type: ignore[no-untyped-def]
    """cache.monitors.used comes from the cycle's one listing; a group we sweep
    that another process removed between that listing and our rmdir (ENOENT)
    is gone too."""
    host.start_qemu("instance-1")
    orphan = group(host, U2)
    host.ops.mkdir(orphan)
    kernel_rmdir = host.ops.rmdir

    def raced_rmdir(path: str) -> None:
        if path == orphan:
            shutil.rmtree(path)  # the other process was first
        kernel_rmdir(path)

    host.ops.rmdir = raced_rmdir
    r = host.backend().sync([InstanceRef(U1, "instance-1")])
    assert not os.path.exists(orphan)
    assert r.monitors_used == 2  # the default group and ours


def test_counter_keys_are_never_reused_across_a_domain_rename(host) -> None:  # type: ignore[no-untyped-def]
    """Each recreation of an instance's group gives its counters new keys; a
    change of its domain name keeps the group and must not start the
    numbering again (a key used before would hide a counter restart)."""
    host.start_qemu("instance-1")
    host.start_qemu("instance-1b")
    b = host.backend()

    def keys(name: str) -> list[str]:
        return sorted(b.sync([InstanceRef(U1, name)]).readings[U1].mbm_total)

    assert keys("instance-1") == ["/0", "/1"]
    host.ops.rmdir(group(host, U1))  # removed behind our back: made again
    assert keys("instance-1") == ["/0#1", "/1#1"]
    assert keys("instance-1b") == ["/0#1", "/1#1"]  # renamed: same group, same keys
    host.ops.rmdir(group(host, U1))
    assert keys("instance-1b") == ["/0#2", "/1#2"]


def _cachetune_instance(host):  # type: ignore[no-untyped-def]
    """instance-1, whose vCPU threads sit in libvirt's <cachetune vcpus='0-1'>
    control group "vcpus_0-1"; returns (qemu, control group path)."""
    q = host.start_qemu("instance-1", extra_threads=2)
    ctrl = os.path.join(host.resctrl, "vcpus_0-1")
    from ceilometer_cmt.testing.kernel_trees import _group_files

    _group_files(host.topo, ctrl, True, fs.EVENTS)
    with open(os.path.join(ctrl, "tasks"), "w") as f:
        f.write("".join(f"{t}\n" for t in q.tids[1:]))
    return q, ctrl


def test_cachetune_control_group_gets_its_own_monitor_group(host):  # type: ignore[no-untyped-def]
    q, ctrl = _cachetune_instance(host)
    vcpus, emulator = list(q.tids[1:]), q.tids[0]
    b = host.backend()
    b.sync([InstanceRef(U1, "instance-1")])
    assert fs.read_tasks(group(host, U1, "vcpus_0-1")) == set(vcpus)
    assert fs.read_tasks(group(host, U1)) == {emulator}
    # libvirt's control group keeps its tasks: nobody moved them out
    assert fs.read_tasks(ctrl) == set(vcpus)
    set_value(group(host, U1), 0, "llc_occupancy", 100)
    set_value(group(host, U1, "vcpus_0-1"), 0, "llc_occupancy", 900)
    set_value(group(host, U1, "vcpus_0-1"), 1, "llc_occupancy", 50)
    r = b.sync([InstanceRef(U1, "instance-1")]).readings[U1]
    assert r.occupancy == {0: 1000, 1: 50}  # summed over both groups
    assert set(r.mbm_total) == {"/0", "/1", "vcpus_0-1/0", "vcpus_0-1/1"}
    # on leaving, both of our groups go, the control group stays
    b.sync([])
    assert not os.path.exists(group(host, U1)) and not os.path.exists(
        group(host, U1, "vcpus_0-1"))
    assert os.path.isdir(ctrl)


def test_one_vanished_group_does_not_count_the_other_groups_again(host):  # type: ignore[no-untyped-def]
    """Our group in libvirt's control group is removed (libvirt remakes that
    control group when the domain restarts): it is made again with new counter
    keys, and the instance's other group keeps its keys and its count."""
    import shutil

    _cachetune_instance(host)
    b = host.backend()
    mon = CacheMonitor(b)
    refs = [InstanceRef(U1, "instance-1")]
    b.sync(refs)
    for ctrl, value in (("", 1_000_000), ("vcpus_0-1", 7_000)):
        for l3 in (0, 1):
            set_value(group(host, U1, ctrl), l3, "mbm_total_bytes", value)
    before = mon.poll(refs).instances[U1].mbm_total_bytes
    assert before == 2 * 1_000_000 + 2 * 7_000
    shutil.rmtree(group(host, U1, "vcpus_0-1"))  # behind our back
    after = mon.poll(refs).instances[U1].mbm_total_bytes
    remade = sum(fs.read_group_event(group(host, U1, "vcpus_0-1"), f"mon_L3_{l3:02d}",
                                          "mbm_total_bytes") or 0 for l3 in (0, 1))
    assert after == before + remade  # the default group's 2,000,000 counted once
    assert set(b.sync(refs).readings[U1].mbm_total) == {
        "/0", "/1", "vcpus_0-1/0#1", "vcpus_0-1/1#1"}


def _group_listings(host, sync):  # type: ignore[no-untyped-def]
    """Run ``sync()``; return its result and its listings of the root and of
    ``mon_groups`` directories, each as (path relative to the root, whether
    the root lock was held then)."""
    import fcntl

    seen: list[tuple[str, bool]] = []

    def note(kind: str, path: str) -> None:
        if kind != "list" or not (path == host.resctrl or path.endswith("/mon_groups")):
            return
        fd = os.open(host.resctrl, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = False
        except BlockingIOError:
            locked = True
        finally:
            os.close(fd)  # releases the probe's lock, if it got it
        seen.append((os.path.relpath(path, host.resctrl), locked))

    with file_calls(host.resctrl, note):
        result = sync()
    return result, seen


def test_groups_are_listed_once_per_cycle_and_under_the_lock_to_place_threads(
        host):  # type: ignore[no-untyped-def]
    """One listing of the groups per cycle serves adoption, the check for our
    vanished groups and monitors_used; a cycle that places threads lists them
    once more under the root lock, shared by the control-group and the
    foreign-monitor-group lookups (before: up to 4 listings of the root)."""
    _cachetune_instance(host)
    host.start_qemu("instance-2")
    b = host.backend()
    one = [InstanceRef(U1, "instance-1")]
    both = one + [InstanceRef(U2, "instance-2")]
    dirs = [".", "mon_groups", "vcpus_0-1/mon_groups"]
    cycle, listed = _group_listings(host, lambda: b.sync(one))
    assert cycle.unmonitored == {}
    assert listed == [(d, False) for d in dirs] + [(d, True) for d in dirs]
    for _ in range(3):  # steady state
        cycle, listed = _group_listings(host, lambda: b.sync(one))
        assert listed == [(d, False) for d in dirs]
        assert cycle.monitors_used == 2 + 2  # two control groups, our two monitor groups
    cycle, listed = _group_listings(host, lambda: b.sync(both))  # a new instance
    assert listed == [(d, False) for d in dirs] + [(d, True) for d in dirs]
    assert cycle.monitors_used == 5 and set(cycle.readings) == {U1, U2}
    cycle, listed = _group_listings(host, lambda: b.sync(both))
    assert listed == [(d, False) for d in dirs]


def test_a_monitor_group_made_between_the_listing_and_the_lock_keeps_its_thread(
        host):  # type: ignore[no-untyped-def]
    """Another tool (which takes the root lock, as libvirt and pqos do) makes a
    monitor group for a new thread of the instance after the cycle's listing,
    before our lock: the thread is left in it, since threads are placed from
    the listing taken under the lock."""
    b, proc = _fake_proc_backend(host)
    refs = [InstanceRef(U1, "instance-a")]
    b.sync(refs)
    build_proc(proc, 4242, qemu_cmdline("instance-a"), [4242, 4250])
    foreign = os.path.join(host.resctrl, "mon_groups", "pqos-7")

    def other_tool(kind: str, path: str) -> None:
        if kind == "open" and path == host.resctrl and not os.path.exists(foreign):
            # the backend opens the root to lock it: it does not hold it yet
            host.ops.mkdir(foreign)
            host.ops.write_tasks(os.path.join(foreign, "tasks"), [4250])

    with file_calls(host.resctrl, other_tool):
        b.sync(refs)
    assert os.path.isdir(foreign)  # the hook ran
    assert fs.read_tasks(foreign) == {4250}
    assert fs.read_tasks(group(host, U1)) == {4242}


def test_threads_in_a_foreign_monitor_group_are_not_moved(host):  # type: ignore[no-untyped-def]
    q = host.start_qemu("instance-1", extra_threads=1)
    foreign = os.path.join(host.resctrl, "mon_groups", "operator-watch")
    host.ops.mkdir(foreign)
    host.ops.write_tasks(os.path.join(foreign, "tasks"), [q.tids[1]])
    b = host.backend()
    b.sync([InstanceRef(U1, "instance-1")])
    assert fs.read_tasks(foreign) == {q.tids[1]}
    assert fs.read_tasks(group(host, U1)) == {q.tids[0]}


@pytest.mark.parametrize("err,reason", [(errno.ENOSPC, "ENOSPC"), (errno.EBUSY, "EBUSY")])
def test_no_rmid_leaves_instance_unmonitored_and_retries(host, caplog, err, reason
                                                         ):  # type: ignore[no-untyped-def]
    host.start_qemu("instance-1")
    host.start_qemu("instance-2")
    host.ops.fail_mkdir = err
    host.ops.status_on_fail = "Out of RMIDs" if err == errno.ENOSPC else "RMID busy"
    b = host.backend()
    refs = [InstanceRef(U1, "instance-1"), InstanceRef(U2, "instance-2")]
    with caplog.at_level(logging.WARNING):
        cycle = b.sync(refs)
    assert set(cycle.unmonitored) == {U1, U2}
    assert all(reason in r for r in cycle.unmonitored.values())
    warnings = [r for r in caplog.records if "cannot create resctrl monitor group" in r.message]
    assert len(warnings) == 1 and host.ops.status_on_fail in warnings[0].message
    assert [c for c in host.ops.calls if c[0] == "mkdir"].__len__() == 1  # stop at 1st failure
    host.ops.fail_mkdir = None
    cycle = b.sync(refs)
    assert cycle.unmonitored == {} and set(cycle.readings) == {U1, U2}


def test_unavailable_values_are_none_never_zero(host):  # type: ignore[no-untyped-def]
    host.start_qemu("instance-1")
    b = host.backend()
    b.sync([InstanceRef(U1, "instance-1")])
    g = group(host, U1)
    set_value(g, 0, "llc_occupancy", "Unavailable")
    set_value(g, 1, "llc_occupancy", 4096)
    set_value(g, 0, "mbm_total_bytes", "Error")
    set_value(g, 0, "mbm_local_bytes", "Unassigned")
    set_value(g, 1, "mbm_local_bytes", "garbage!")
    r = b.sync([InstanceRef(U1, "instance-1")]).readings[U1]
    assert r.occupancy == {0: None, 1: 4096}
    assert r.mbm_total["/0"] is None and r.mbm_local == {"/0": None, "/1": None}
    m = CacheMonitor(b).poll([InstanceRef(U1, "instance-1")]).instances[U1]
    assert m.occupancy is None and m.occupancy_percent is None
    assert m.mbm_total_bytes is None and m.mbm_local_bytes is None


def test_snc_sums_sub_nodes_when_no_top_level_file(tmp_path):  # type: ignore[no-untyped-def]
    from tests.conftest import make_host

    h = make_host(str(tmp_path), SNC)
    try:
        h.start_qemu("instance-1")
        b = h.backend()
        b.sync([InstanceRef(U1, "instance-1")])
        g = group(h, U1)
        # kernel >= 6.11: the top-level file is the sum; both are present
        set_value(g, 0, "llc_occupancy", 300)
        set_value(g, 0, "llc_occupancy", 100, sub=0)
        set_value(g, 0, "llc_occupancy", 200, sub=1)
        os.remove(os.path.join(g, "mon_data", "mon_L3_01", "llc_occupancy"))
        set_value(g, 1, "llc_occupancy", 5, sub=2)
        set_value(g, 1, "llc_occupancy", 7, sub=3)
        # a kernel that never made the top-level file: an agent starting on it
        b.close()
        r = h.backend().sync([InstanceRef(U1, "instance-1")]).readings[U1]
        assert r.occupancy == {0: 300, 1: 12}
    finally:
        for q in h.qemus:
            q.stop()


def test_snc_without_top_level_files_opens_each_node_file_once_per_cycle(tmp_path
                                                                         ):  # type: ignore[no-untyped-def]
    """The layout is found once: later cycles open each node file once and never
    try the missing top-level file (it was tried twice per value and cycle)."""
    from tests.conftest import make_host

    h = make_host(str(tmp_path), SNC)
    try:
        h.start_qemu("instance-1")
        refs = [InstanceRef(U1, "instance-1")]
        setup = h.backend()
        setup.sync(refs)
        setup.close()
        g = group(h, U1)
        nodes = _node_files_only(g, {(0, 0): 100, (0, 1): 200, (1, 2): 5, (1, 3): 7})
        b = h.backend()  # an agent starting on such a kernel
        mon_data = os.path.join(g, "mon_data")
        with file_calls(mon_data) as first:
            assert b.sync(refs).readings[U1].occupancy == {0: 300, 1: 12}
        tops = [os.path.join(mon_data, f"mon_L3_{l3:02d}", ev)
                for l3 in SNC.l3_ids for ev in fs.EVENTS]
        assert sorted(p for p in first.opens if p in tops) == sorted(tops)  # tried once
        with file_calls(mon_data) as steady:
            for _ in range(3):
                r = b.sync(refs).readings[U1]
        assert sorted(steady.opens) == sorted(nodes * 3)
        assert steady.listings == []
        assert r.occupancy == {0: 300, 1: 12}
        assert r.mbm_total == {"/0": 300, "/1": 12} and r.mbm_local == {"/0": 300, "/1": 12}
        b.close()
        assert _open_under(g) == 0
    finally:
        for q in h.qemus:
            q.stop()


def test_amd_many_domains_and_percent_of_busiest(tmp_path):  # type: ignore[no-untyped-def]
    from tests.conftest import make_host

    h = make_host(str(tmp_path), AMD_CCX)
    try:
        h.start_qemu("instance-1")
        b = h.backend()
        mon = CacheMonitor(b)
        assert len(mon.host_cache.domains) == 8 and mon.host_cache.size == 8 * 32 * 1024 * 1024
        mon.poll([InstanceRef(U1, "instance-1")])
        g = group(h, U1)
        set_value(g, 3, "llc_occupancy", 16 * 1024 * 1024)  # half of CCX 3
        set_value(g, 5, "llc_occupancy", 8 * 1024 * 1024)
        m = mon.poll([InstanceRef(U1, "instance-1")]).instances[U1]
        assert m.occupancy == 24 * 1024 * 1024
        assert m.occupancy_percent == pytest.approx(50.0)
        assert m.occupancy_domains is not None and m.occupancy_domains[3] == 16 * 1024 * 1024
    finally:
        for q in h.qemus:
            q.stop()


def test_group_recreated_keeps_cumulative_monotonic(host):  # type: ignore[no-untyped-def]
    clock = iter(range(0, 1000, 60))
    host.start_qemu("instance-1")
    b = host.backend()
    mon = CacheMonitor(b, clock=lambda: float(next(clock)))
    ref = [InstanceRef(U1, "instance-1")]
    zero = mon.poll(ref).instances[U1]  # t=0: a fresh group counts from 0
    assert zero.mbm_total_bytes == 0 and zero.mbm_total_rate is None  # first read: no rate
    g = group(host, U1)
    set_value(g, 0, "mbm_total_bytes", 6000)
    first = mon.poll(ref).instances[U1]  # t=60
    assert first.mbm_total_bytes == 6000 and first.mbm_total_rate == pytest.approx(100.0)
    # someone removes our group; it is recreated and its counter restarts at 0
    host.ops.rmdir(g)
    second = mon.poll(ref).instances[U1]  # t=120
    assert b.mkdirs == 2 and os.path.isdir(g)
    assert second.mbm_total_bytes == 6000 and second.mbm_total_rate is None  # across reset
    set_value(g, 0, "mbm_total_bytes", 600)
    third = mon.poll(ref).instances[U1]  # t=180
    assert third.mbm_total_bytes == 6600 and third.mbm_total_rate == pytest.approx(10.0)
    # a counter that goes backwards without recreation (hardware reset) is a reset too
    set_value(g, 0, "mbm_total_bytes", 60)
    fourth = mon.poll(ref).instances[U1]
    assert fourth.mbm_total_bytes == 6660 and fourth.mbm_total_rate is None


def test_refuses_plain_directory_and_missing_feature(tmp_path):  # type: ignore[no-untyped-def]
    from ceilometer_cmt.testing.kernel_trees import build_resctrl

    topo = get_topology("intel-2s")
    root = build_resctrl(str(tmp_path / "r"), topo)
    with pytest.raises(BackendUnavailable, match="not a mount point"):
        ResctrlBackend(root, verify_mount=True)
    root2 = build_resctrl(str(tmp_path / "r2"), topo, features=("mbm_total_bytes",))
    with pytest.raises(BackendUnavailable, match="llc_occupancy"):
        ResctrlBackend(root2, verify_mount=False)


def test_hostile_instances_do_not_disturb_others(host):  # type: ignore[no-untyped-def]
    host.start_qemu("good")
    with open(os.path.join(host.pid_dir, "garbage.pid"), "w") as f:
        f.write("12ab\n")
    with open(os.path.join(host.pid_dir, "reused.pid"), "w") as f:
        f.write(f"{os.getpid()}\n")  # a live pid that is not a qemu of that name
    b = host.backend()
    cycle = b.sync([
        InstanceRef(U1, "good"),
        InstanceRef("33333333-3333-4333-8333-333333333333", "../../etc/passwd"),
        InstanceRef("44444444-4444-4444-8444-444444444444", "garbage"),
        InstanceRef("55555555-5555-4555-8555-555555555555", "reused"),
        InstanceRef("66666666-6666-4666-8666-666666666666", "new\nline"),
        InstanceRef("not-a-uuid/../x", "good"),
    ])
    assert set(cycle.readings) == {U1}
    assert len(cycle.unmonitored) == 5
    assert "pid reused" in cycle.unmonitored["55555555-5555-4555-8555-555555555555"]
    assert "bad pidfile" in cycle.unmonitored["44444444-4444-4444-8444-444444444444"]
    assert os.listdir(os.path.join(host.resctrl, "mon_groups")) == ["ceilometer-" + U1]


def _pidfds() -> set[str]:
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[pidfd]":
                out.add(fd)
        except FileNotFoundError:
            pass  # the fd of the listing itself
    return out


def test_real_proc_holds_one_pidfd_per_instance_and_releases_it(host
                                                                 ):  # type: ignore[no-untyped-def]
    host.start_qemu("instance-1")
    host.start_qemu("instance-2")
    b = host.backend()
    before = _pidfds()
    b.sync([InstanceRef(U1, "instance-1"), InstanceRef(U2, "instance-2")])
    assert len(_pidfds() - before) == 2
    b.sync([InstanceRef(U2, "instance-2")])  # instance 1 leaves: its pidfd goes
    assert len(_pidfds() - before) == 1
    b.close()
    assert _pidfds() - before == set()


def test_pidfd_notices_exit_although_the_pidfile_stays(host):  # type: ignore[no-untyped-def]
    q = host.start_qemu("instance-1")
    b = host.backend()
    refs = [InstanceRef(U1, "instance-1")]
    assert U1 in b.sync(refs).readings
    pidfile = q.pidfile
    with open(pidfile) as f:
        stale = f.read()
    q.stop()  # removes the pidfile: put it back, as a crashed qemu leaves it
    with open(pidfile, "w") as f:
        f.write(stale)
    cycle = b.sync(refs)
    assert U1 not in cycle.readings and U1 in cycle.unmonitored


def test_thread_moved_away_is_put_back_within_relist_cycles(host
                                                           ):  # type: ignore[no-untyped-def]
    from ceilometer_cmt.backends.resctrl.backend import RELIST

    q = host.start_qemu("instance-1", extra_threads=1)
    b = host.backend()
    refs = [InstanceRef(U1, "instance-1")]
    b.sync(refs)
    b.sync(refs)  # settled: nothing new
    g = group(host, U1)
    moved = q.tids[1]
    host.ops._remove_tid(g, moved)  # another tool moved it back to the default group
    writes = b.writes
    for _ in range(RELIST):
        b.sync(refs)
    assert moved in fs.read_tasks(g)
    assert b.writes == writes + 1


def test_value_files_stay_open_and_are_released(host):  # type: ignore[no-untyped-def]
    host.start_qemu("instance-1")
    host.start_qemu("instance-2")
    b = host.backend()
    refs = [InstanceRef(U1, "instance-1"), InstanceRef(U2, "instance-2")]
    b.sync(refs)
    assert _open_under(host.resctrl) == 2 * 2 * 3  # 2 groups x 2 domains x 3 events
    set_value(group(host, U1), 1, "llc_occupancy", 4242)  # read again through the open fd
    assert b.sync(refs).readings[U1].occupancy[1] == 4242
    b.sync(refs[1:])
    assert _open_under(host.resctrl) == 6
    b.close()
    assert _open_under(host.resctrl) == 0


def test_no_fd_budget_reads_by_opening_each_time(host):  # type: ignore[no-untyped-def]
    host.start_qemu("instance-1")
    b = host.backend(fd_budget=0)
    refs = [InstanceRef(U1, "instance-1")]
    b.sync(refs)
    set_value(group(host, U1), 0, "mbm_local_bytes", 77)
    assert b.sync(refs).readings[U1].mbm_local["/0"] == 77
    assert _open_under(host.resctrl) == 0


def test_an_l3_domain_going_offline_is_no_data_not_a_vanished_group(host) -> None:  # type: ignore[no-untyped-def]
    """All CPUs of socket 1 offline: the kernel takes mon_L3_01 out of every
    group, the groups stay. The instance stays monitored (no new group, no
    write), its occupancy is that of the online domain, its MBM is no data;
    when the domain is back its counters go on under the same keys, so the
    cumulative is counted once (values opened per read: on a fixture tree a
    kept fd would go on reading the removed file)."""
    host.start_qemu("instance-1")
    ref = InstanceRef(U1, "instance-1")
    b = host.backend(fd_budget=0)
    mon = CacheMonitor(b, clock=lambda: 0.0)
    try:
        mon.poll([ref])
        g = os.path.join(host.resctrl, "mon_groups", "ceilometer-" + U1)
        set_value(g, 0, "mbm_total_bytes", 1000)
        set_value(g, 1, "mbm_total_bytes", 500)
        set_value(g, 0, "llc_occupancy", 4096)
        assert mon.poll([ref]).instances[U1].mbm_total_bytes == 1500
        mkdirs, writes = b.mkdirs, b.writes
        saved = os.path.join(host.root, "mon_L3_01-offline")
        shutil.move(os.path.join(g, "mon_data", "mon_L3_01"), saved)
        for _ in range(3):
            r = mon.poll([ref])
            assert r.unmonitored == {}
            m = r.instances[U1]
            assert (m.occupancy, m.occupancy_domains) == (4096, {0: 4096})
            assert m.mbm_total_bytes is None  # part of the counters gave nothing
        assert (b.mkdirs, b.writes) == (mkdirs, writes)
        shutil.move(saved, os.path.join(g, "mon_data", "mon_L3_01"))
        set_value(g, 0, "mbm_total_bytes", 1100)  # domain 0 went on meanwhile
        assert mon.poll([ref]).instances[U1].mbm_total_bytes == 1600  # not 2600
    finally:
        b.close()


def test_the_privsep_daemons_rmid_reserve_reads_as_no_free_rmid(host, caplog
                                                                 ):  # type: ignore[no-untyped-def]
    """The daemon refuses a mkdir that would eat into its RMID reserve with
    ENOSPC and its own text: the instances are unmonitored with both, one WARNING."""
    text = ("refused by the ceilometer-cmt privsep daemon, rule rmid-reserve: no monitor "
            "group made: 160 of 176 RMIDs are in use and 16 are kept in reserve")
    host.start_qemu("instance-1")
    host.start_qemu("instance-2")

    class Reserve:
        def __init__(self, ops):  # type: ignore[no-untyped-def]
            self.ops = ops

        def mkdir(self, path: str) -> None:
            raise OSError(errno.ENOSPC, text)

        def rmdir(self, path: str) -> None:
            self.ops.rmdir(path)

        def write_tasks(self, tasks_path, tids, domain_name=""):  # type: ignore[no-untyped-def]
            return self.ops.write_tasks(tasks_path, tids, domain_name)

    b = host.backend(ops=Reserve(host.ops))
    refs = [InstanceRef(U1, "instance-1"), InstanceRef(U2, "instance-2")]
    with caplog.at_level(logging.WARNING):
        cycle = b.sync(refs)
    assert cycle.unmonitored == {U1: f"no free RMID (ENOSPC): {text}",
                                 U2: f"no free RMID (ENOSPC): {text}"}
    warnings = [r for r in caplog.records if "cannot create resctrl monitor group" in r.message]
    assert len(warnings) == 1 and "rule rmid-reserve" in warnings[0].message


# ------------------------------------------------------- Intel AET telemetry
def _aet_host(host, **kw):  # type: ignore[no-untyped-def]
    """The fixture host with Intel AET (PERF_PKG, two packages) added."""
    from ceilometer_cmt.testing.perf_pkg_tree import PerfPkgKernelOps, build_perf_pkg

    features = kw.pop("features", None)
    args = {} if features is None else {"features": features}
    build_perf_pkg(host.resctrl, **args, **kw)
    host.ops = PerfPkgKernelOps(host.resctrl, host.topo, **(
        {} if features is None else {"perf_pkg_features": features}))
    return host


def test_aet_telemetry_is_read_per_package(host):  # type: ignore[no-untyped-def]
    from ceilometer_cmt.testing.perf_pkg_tree import raw_fixed, set_telemetry

    _aet_host(host)
    host.start_qemu("instance-00000001")
    b = host.backend()
    refs = [InstanceRef(U1, "instance-00000001")]
    assert b.host_cache().monitors_total == 176  # min(L3_MON 176, PERF_PKG_MON 576)
    b.sync(refs)
    g = group(host, U1)
    set_telemetry(g, 0, "core_energy", raw_fixed(12))
    set_telemetry(g, 1, "core_energy", "Unavailable")
    set_telemetry(g, 0, "uops_retired", 777)
    set_telemetry(g, 1, "activity", "Error")  # not read: no meter needs it
    cycle = b.sync(refs)
    tele = cycle.telemetry[U1]
    assert sorted(tele) == sorted(["core_energy", "unhalted_core_cycles", "uops_retired",
                                   "stalls_llc_miss"])
    assert tele["core_energy"] == {"/0": 12 * 10**9, "/1": None}
    assert tele["uops_retired"] == {"/0": 777, "/1": 0}
    assert U1 in cycle.readings
    # the steady state keeps its fds: no open at all
    with file_calls(host.resctrl) as calls:
        b.sync(refs)
    assert calls.opens == []
    b.close()


def test_aet_group_limit_is_the_smaller_num_rmids(host):  # type: ignore[no-untyped-def]
    _aet_host(host, num_rmids=64)
    assert host.backend().host_cache().monitors_total == 64


def test_no_perf_pkg_no_telemetry(host):  # type: ignore[no-untyped-def]
    host.start_qemu("instance-00000001")
    b = host.backend()
    assert b.perf_pkg is None and b._telemetry is None
    cycle = b.sync([InstanceRef(U1, "instance-00000001")])
    assert cycle.telemetry == {} and U1 in cycle.readings


def test_aet_without_the_needed_events_reads_none(host):  # type: ignore[no-untyped-def]
    _aet_host(host, features=("activity", "c6_res"))
    host.start_qemu("instance-00000001")
    b = host.backend()
    assert b.perf_pkg is not None and b._telemetry is None
    assert b.sync([InstanceRef(U1, "instance-00000001")]).telemetry == {}


def test_aet_recreated_group_gets_new_keys_and_fds_are_released(host):  # type: ignore[no-untyped-def]
    _aet_host(host)
    host.start_qemu("instance-00000001")
    b = host.backend()
    refs = [InstanceRef(U1, "instance-00000001")]
    b.sync(refs)
    assert set(b.sync(refs).telemetry[U1]["core_energy"]) == {"/0", "/1"}
    host.ops.rmdir(group(host, U1))  # someone else removed it
    tele = b.sync(refs).telemetry[U1]
    assert set(tele["core_energy"]) == {"/0#1", "/1#1"}
    b.sync([])
    assert b._values.open_fds == 0
    assert _open_under(host.resctrl) == 0
