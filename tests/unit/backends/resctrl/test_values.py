"""Reading mon_data values through kept fds (ValueReader) on kernel-format trees."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil

import pytest

from ceilometer_cmt.backends.resctrl import fs
from ceilometer_cmt.backends.resctrl.values import GroupVanished, ValueReader
from ceilometer_cmt.readings import InstanceReading
from ceilometer_cmt.simulator.topology import get_topology
from ceilometer_cmt.testing.kernel_trees import (
    KernelOps,
    _group_files,
    build_resctrl,
    file_calls,
    set_value,
)

INTEL_2S = get_topology("intel-2s")
SNC = get_topology("snc")


def _node_files_only(group_dir: str, values: dict[tuple[int, int], int]) -> list[str]:
    """Make ``group_dir`` look like an SNC kernel without top-level value files:
    remove them, write ``values`` ((L3 id, node) -> bytes, every event) in the
    nodes' files, and return the paths of those files."""
    nodes = []
    for (l3, node), value in sorted(values.items()):
        for ev in fs.EVENTS:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(group_dir, "mon_data", f"mon_L3_{l3:02d}", ev))
            set_value(group_dir, l3, ev, value, sub=node)
            nodes.append(os.path.join(group_dir, "mon_data", f"mon_L3_{l3:02d}",
                                      f"mon_sub_L3_{node:02d}", ev))
    return nodes


def _open_under(root: str) -> int:
    """How many of this process's fds name a file under ``root``."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}").startswith(root)
        except FileNotFoundError:
            pass
    return n


def _intel_group(tmp_path, name: str = "ceilometer-x") -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """(resctrl root, path of a new monitor group in its default control group)."""
    root = build_resctrl(str(tmp_path / "r"), INTEL_2S)
    g = os.path.join(root, "mon_groups", name)
    KernelOps(root, INTEL_2S).mkdir(g)
    return root, g


def _value_paths(g: str) -> list[str]:
    return [os.path.join(g, "mon_data", f"mon_L3_{l3:02d}", ev)
            for l3 in INTEL_2S.l3_ids for ev in fs.EVENTS]


def _read(reader: ValueReader, g: str, ctrl: str = "", gen: str = "") -> InstanceReading:
    r = InstanceReading({}, {}, {})
    reader.read(r, g, ctrl, gen)
    return r


def test_kept_fds_give_fresh_values_without_an_open(tmp_path):  # type: ignore[no-untyped-def]
    """The first read opens each value file once; later reads pread the kept
    fds (no open at all) and see what the kernel shows now; forget and close
    release every fd."""
    root, g = _intel_group(tmp_path)
    reader = ValueReader(fs.list_domains(root), fs.EVENTS, fd_budget=100)
    with file_calls(g) as first:
        r = _read(reader, g)
    assert sorted(first.opens) == sorted(_value_paths(g))
    assert (r.occupancy, r.mbm_total, r.mbm_local) == (
        {0: 0, 1: 0}, {"/0": 0, "/1": 0}, {"/0": 0, "/1": 0})
    assert reader.open_fds == 6 == _open_under(g)
    set_value(g, 1, "llc_occupancy", 4242)  # the same file, as kernfs shows it
    set_value(g, 0, "mbm_total_bytes", 2**50)
    set_value(g, 1, "mbm_local_bytes", 7)
    with file_calls(g) as steady:
        r = _read(reader, g)
    assert steady.opens == [] and steady.listings == []
    assert (r.occupancy, r.mbm_total, r.mbm_local) == (
        {0: 0, 1: 4242}, {"/0": 2**50, "/1": 0}, {"/0": 0, "/1": 7})
    reader.forget(g)
    assert reader.open_fds == 0 == _open_under(g)
    _read(reader, g)
    reader.close()
    assert reader.open_fds == 0 == _open_under(g)


def test_counter_keys_carry_the_control_group_and_the_generation(tmp_path
                                                                 ):  # type: ignore[no-untyped-def]
    root, g = _intel_group(tmp_path)
    reader = ValueReader(fs.list_domains(root), fs.EVENTS, fd_budget=100)
    r = _read(reader, g, "vcpus_0-1", "#2")
    assert set(r.occupancy) == {0, 1}  # occupancy: per L3 domain only
    assert set(r.mbm_total) == set(r.mbm_local) == {"vcpus_0-1/0#2", "vcpus_0-1/1#2"}
    reader.close()


def test_past_the_fd_budget_files_are_opened_at_each_read(tmp_path
                                                          ):  # type: ignore[no-untyped-def]
    """Within the budget files stay open, past it they are opened per read; a
    file opened per read is kept open once a forgotten group made room."""
    root, g = _intel_group(tmp_path)
    other = os.path.join(root, "mon_groups", "ceilometer-y")
    KernelOps(root, INTEL_2S).mkdir(other)
    reader = ValueReader(fs.list_domains(root), fs.EVENTS, fd_budget=4)
    set_value(g, 1, "mbm_local_bytes", 11)
    set_value(other, 1, "mbm_local_bytes", 22)
    assert _read(reader, g).mbm_local == {"/0": 0, "/1": 11}
    assert reader.open_fds == 4 == _open_under(g)
    with file_calls(g) as calls:
        assert _read(reader, g).mbm_local == {"/0": 0, "/1": 11}
    assert sorted(calls.opens) == sorted(_value_paths(g)[4:])  # the two past the budget
    with file_calls(other) as calls:
        assert _read(reader, other).mbm_local == {"/0": 0, "/1": 22}
    assert sorted(calls.opens) == sorted(_value_paths(other))  # no room left at all
    assert _open_under(other) == 0
    reader.forget(g)
    assert reader.open_fds == 0
    _read(reader, other)  # room now: its files are kept open
    assert reader.open_fds == 4 == _open_under(other)
    with file_calls(other) as calls:
        assert _read(reader, other).mbm_local == {"/0": 0, "/1": 22}
    assert sorted(calls.opens) == sorted(_value_paths(other)[4:])
    reader.close()
    assert _open_under(root) == 0


@pytest.mark.parametrize("fd_budget", [100, 0])
def test_a_file_without_a_number_is_no_data_the_others_are_read(tmp_path, fd_budget
                                                                ):  # type: ignore[no-untyped-def]
    root, g = _intel_group(tmp_path)
    reader = ValueReader(fs.list_domains(root), fs.EVENTS, fd_budget=fd_budget)
    _read(reader, g)
    set_value(g, 0, "llc_occupancy", "Unavailable")
    set_value(g, 1, "mbm_total_bytes", "Error")
    set_value(g, 0, "mbm_local_bytes", "12x")
    set_value(g, 1, "llc_occupancy", 99)
    r = _read(reader, g)
    assert r.occupancy == {0: None, 1: 99}
    assert r.mbm_total == {"/0": 0, "/1": None}
    assert r.mbm_local == {"/0": None, "/1": 0}
    reader.close()


def test_an_offline_l3_domain_is_left_out_then_read_again_under_its_keys(tmp_path
                                                                        ):  # type: ignore[no-untyped-def]
    """``mon_L3_01`` leaves the group, the group stays: its occupancy is left
    out, its MBM counters are no data, nothing raises; back, the same keys.
    (Values opened per read: on a fixture tree a kept fd would go on reading
    the moved file.)"""
    root, g = _intel_group(tmp_path)
    reader = ValueReader(fs.list_domains(root), fs.EVENTS, fd_budget=0)
    for ev in fs.EVENTS:
        set_value(g, 0, ev, 100)
        set_value(g, 1, ev, 200)
    domain = os.path.join(g, "mon_data", "mon_L3_01")
    saved = str(tmp_path / "offline")
    shutil.move(domain, saved)
    r = _read(reader, g)
    assert r.occupancy == {0: 100}
    assert r.mbm_total == r.mbm_local == {"/0": 100, "/1": None}
    shutil.move(saved, domain)
    r = _read(reader, g)
    assert r.occupancy == {0: 100, 1: 200}
    assert r.mbm_total == r.mbm_local == {"/0": 100, "/1": 200}
    assert _open_under(root) == 0


def test_a_removed_group_is_vanished_and_holds_no_fd(tmp_path):  # type: ignore[no-untyped-def]
    root, g = _intel_group(tmp_path)
    reader = ValueReader(fs.list_domains(root), fs.EVENTS, fd_budget=0)
    _read(reader, g)
    shutil.rmtree(g)
    with pytest.raises(GroupVanished) as e:
        _read(reader, g)
    assert e.value.path == g
    assert reader.open_fds == 0 and _open_under(root) == 0


def test_occupancy_is_summed_over_an_instances_groups_only(tmp_path
                                                         ):  # type: ignore[no-untyped-def]
    """Occupancy of a domain the reading already holds comes from the instance's
    group in another control group: summed (no data in one: no data); MBM
    counters keep one key per control group; a fresh reading starts anew."""
    root = build_resctrl(str(tmp_path / "r"), INTEL_2S)
    ops = KernelOps(root, INTEL_2S)
    a = os.path.join(root, "mon_groups", "ceilometer-a")
    ops.mkdir(a)
    _group_files(INTEL_2S, os.path.join(root, "ct"), True, fs.EVENTS)
    b = os.path.join(root, "ct", "mon_groups", "ceilometer-a")
    ops.mkdir(b)
    for grp, base in ((a, 100), (b, 10)):
        for l3 in (0, 1):
            set_value(grp, l3, "llc_occupancy", base + l3)
            set_value(grp, l3, "mbm_total_bytes", 1000 * base + l3)
    set_value(b, 1, "llc_occupancy", "Unavailable")
    reader = ValueReader(fs.list_domains(root), fs.EVENTS, fd_budget=100)
    one = InstanceReading({}, {}, {})
    reader.read(one, a, "", "")
    assert one.occupancy == {0: 100, 1: 101}
    both = InstanceReading({}, {}, {})
    reader.read(both, a, "", "")
    reader.read(both, b, "ct", "#1")
    assert both.occupancy == {0: 110, 1: None}
    assert both.mbm_total == {"/0": 100000, "/1": 100001, "ct/0#1": 10000, "ct/1#1": 10001}
    alone = InstanceReading({}, {}, {})
    reader.read(alone, b, "ct", "#1")
    assert alone.occupancy == {0: 10, 1: None}
    reader.close()


def test_snc_layout_change_is_followed_and_a_vanished_group_told(tmp_path
                                                                 ):  # type: ignore[no-untyped-def]
    """The remembered layout is left when its files go, within the same group
    directory: top-level files appear, node files only again, then the whole
    group gone (GroupVanished; a group made again is one too, see
    test_reliability); fds released throughout."""
    root = build_resctrl(str(tmp_path / "r"), SNC)
    g = os.path.join(root, "mon_groups", "ceilometer-x")
    KernelOps(root, SNC).mkdir(g)
    domains = fs.list_domains(root)
    # values opened at each read: on tmpfs a kept fd goes on reading a removed
    # file, where kernfs answers ENODEV (kept fds: see test_reliability)
    reader = ValueReader(domains, fs.EVENTS, fd_budget=0)

    def read() -> InstanceReading:
        r = InstanceReading({}, {}, {})
        reader.read(r, g, "", "")
        return r

    nodes = _node_files_only(g, {(0, 0): 1, (0, 1): 2, (1, 2): 3, (1, 3): 4})
    assert read().occupancy == {0: 3, 1: 7} and reader.open_fds == 0
    # top-level files appear and the node files go: followed at once
    for l3 in SNC.l3_ids:
        for ev in fs.EVENTS:
            set_value(g, l3, ev, 1000 + l3)
    for p in nodes:
        os.remove(p)
    assert read().occupancy == {0: 1000, 1: 1001}
    tops = [os.path.join(g, "mon_data", f"mon_L3_{l3:02d}", ev)
            for l3 in SNC.l3_ids for ev in fs.EVENTS]
    with file_calls(os.path.join(g, "mon_data")) as calls:
        assert read().mbm_total == {"/0": 1000, "/1": 1001}
    assert sorted(calls.opens) == sorted(tops)
    # node files only again
    _node_files_only(g, {(0, 0): 10, (0, 1): 20, (1, 2): 30, (1, 3): 40})
    assert read().occupancy == {0: 30, 1: 70}
    # one node without a value: no partial sum
    set_value(g, 1, "llc_occupancy", "Unavailable", sub=3)
    assert read().occupancy == {0: 30, 1: None}
    shutil.rmtree(g)
    with pytest.raises(GroupVanished):
        read()
    assert reader.open_fds == 0 and _open_under(str(tmp_path)) == 0


def test_a_value_file_that_cannot_be_opened_leaks_no_fd(tmp_path):  # type: ignore[no-untyped-def]
    """ELOOP (like EMFILE or EACCES) on one file of a group: the files of that
    group already opened must not be lost; the read fails, nothing stays open."""

    group_dir = str(tmp_path / "mon_groups" / "ceilometer-x")
    events = ("llc_occupancy", "mbm_total_bytes", "mbm_local_bytes")
    for dom in ("mon_L3_00", "mon_L3_01"):
        os.makedirs(os.path.join(group_dir, "mon_data", dom))
        for ev in events:
            path = os.path.join(group_dir, "mon_data", dom, ev)
            if dom == "mon_L3_01" and ev == "llc_occupancy":
                os.symlink(path, path)  # a loop: open() gives ELOOP
            else:
                with open(path, "w") as f:
                    f.write("1000\n")
    reader = ValueReader([(0, "mon_L3_00"), (1, "mon_L3_01")], events, fd_budget=100)
    for _ in range(3):
        with pytest.raises(OSError) as info:
            reader.read(InstanceReading({}, {}, {}), group_dir, "", "")
        assert info.value.errno == errno.ELOOP
        assert _open_under(str(tmp_path)) == reader.open_fds
    reader.close()
    assert reader.open_fds == 0
    assert _open_under(str(tmp_path)) == 0


# ------------------------------------ only the events the polled meters need

U1 = "11111111-1111-4111-8111-111111111111"


@pytest.mark.parametrize("events,expected", [
    ({"llc_occupancy"}, {"llc_occupancy"}),  # cache.occupancy alone
    ({"llc_occupancy", "mbm_total_bytes"}, {"llc_occupancy", "mbm_total_bytes"}),
    (set(fs.EVENTS), set(fs.EVENTS)),
    (None, set(fs.EVENTS)),  # not told: all the host offers
    (frozenset(), set()),  # host meters only: no value read at all
    ({"mbm_local_bytes", "core_energy"}, {"mbm_local_bytes"}),  # no PERF_PKG here
])
def test_the_backend_reads_only_the_events_asked_for(host, events, expected
                                                     ):  # type: ignore[no-untyped-def]
    """With no fd kept (budget 0) each value read is one open: the audit hook
    counts exactly the reads, one per event and L3 domain (intel-2s: 2), and
    the meters of an event not read have no value (None, never 0)."""
    from collections import Counter

    from ceilometer_cmt.monitor import CacheMonitor
    from ceilometer_cmt.readings import InstanceRef

    host.start_qemu("instance-00000001")
    b = host.backend(fd_budget=0, events=events)
    monitor = CacheMonitor(b)
    refs = [InstanceRef(U1, "instance-00000001")]
    monitor.poll(refs)
    g = os.path.join(host.resctrl, "mon_groups", "ceilometer-" + U1)
    for ev in fs.EVENTS:
        for l3 in INTEL_2S.l3_ids:
            set_value(g, l3, ev, 4096 * (l3 + 1))
    with file_calls(os.path.join(g, "mon_data")) as calls:
        meters = monitor.poll(refs).instances[U1]
    assert Counter(os.path.basename(p) for p in calls.opens) == {
        ev: len(INTEL_2S.l3_ids) for ev in expected}
    assert (meters.occupancy is not None) == ("llc_occupancy" in expected)
    assert (meters.mbm_total_bytes is not None) == ("mbm_total_bytes" in expected)
    assert (meters.mbm_local_bytes is not None) == ("mbm_local_bytes" in expected)
    if "llc_occupancy" in expected:
        assert meters.occupancy == 4096 + 8192
    b.close()
