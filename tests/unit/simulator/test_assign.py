"""MBM counter assignment (``mbm_event`` mode, AMD ABMC, Linux 6.18) in the
simulator's state machine, through the files of :mod:`.tree` without FUSE.

Texts and errnos are the kernel's (fs/resctrl/monitor.c); see
ceilometer_cmt/simulator/assign.py.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

import pytest

from ceilometer_cmt.simulator.errors import SimError
from ceilometer_cmt.simulator.groups import Caller
from ceilometer_cmt.simulator.kstr import kstrtobool, kstrtoul, strsep
from ceilometer_cmt.simulator.model import Model
from ceilometer_cmt.simulator.scenario import parse_scenario
from ceilometer_cmt.simulator.timeline import ManualClock
from ceilometer_cmt.simulator.topology import get_topology
from ceilometer_cmt.simulator.tree import Dir, File, resolve

MiB = 1024 * 1024
ROOT = Caller(uid=0, pid=1)
ASSIGN = ("info", "L3_MON", "mbm_L3_assignments")


def model(topology: str = "amd-abmc", **scenario: object) -> Model:
    topo = get_topology(topology)
    base: dict[str, object] = {"clock": "manual", "limbo_seconds": 0}
    return Model(topo, parse_scenario({**base, **scenario}, topo))


def read(m: Model, path: str) -> str:
    node = resolve(m, tuple(path.split("/")))
    assert isinstance(node, File)
    return node.read()


def write(m: Model, path: str, data: bytes) -> None:
    node = resolve(m, tuple(path.split("/")))
    assert isinstance(node, File) and node.write is not None
    node.write(data, ROOT)


def errno_of(fn: Callable[[], object]) -> int:
    with pytest.raises(SimError) as info:
        fn()
    return info.value.errno


def status(m: Model) -> str:
    return read(m, "info/last_cmd_status")


def advance(m: Model, seconds: float) -> None:
    assert isinstance(m.clock, ManualClock)
    m.clock.advance(seconds)
    m.advance()


def entries(m: Model, path: str) -> tuple[str, ...]:
    node = resolve(m, tuple(p for p in path.split("/") if p))
    assert isinstance(node, Dir)
    return node.entries


# ------------------------------------------------------------ the files
def test_abmc_host_boots_in_mbm_event_mode_with_its_files() -> None:
    m = model()
    assert read(m, "info/L3_MON/mbm_assign_mode") == "[mbm_event]\ndefault\n"
    assert read(m, "info/L3_MON/num_mbm_cntrs") == "0=8;1=8\n"
    # the root group got its counters at mount: total and local in each domain
    assert read(m, "info/L3_MON/available_mbm_cntrs") == "0=6;1=6\n"
    assert read(m, "info/L3_MON/mbm_assign_on_mkdir") == "1\n"
    assert status(m) == "ok\n"
    assert set(entries(m, "info/L3_MON")) >= {
        "mbm_assign_mode", "num_mbm_cntrs", "available_mbm_cntrs", "mbm_assign_on_mkdir",
        "event_configs",
    }
    assert "mbm_total_bytes_config" not in entries(m, "info/L3_MON")  # hidden in mbm_event
    assert entries(m, "info/L3_MON/event_configs") == ("mbm_local_bytes", "mbm_total_bytes")
    assert read(m, "info/L3_MON/event_configs/mbm_total_bytes/event_filter") == (
        "local_reads,remote_reads,local_non_temporal_writes,remote_non_temporal_writes,"
        "local_reads_slow_memory,remote_reads_slow_memory,dirty_victim_writes_all\n"
    )
    assert read(m, "info/L3_MON/event_configs/mbm_local_bytes/event_filter") == (
        "local_reads,local_non_temporal_writes,local_reads_slow_memory\n"
    )
    assert read(m, "mbm_L3_assignments") == (
        "mbm_total_bytes:0=e;1=e\nmbm_local_bytes:0=e;1=e\n"
    )
    assert read(m, "info/L3_MON/mon_features") == (
        "llc_occupancy\nmbm_total_bytes\nmbm_local_bytes\n"
    )


def test_older_presets_have_none_of_the_new_files() -> None:
    for name in ("intel-2s", "amd-ccx", "snc"):
        m = model(name)
        assert entries(m, "info/L3_MON") == ("max_threshold_occupancy", "mon_features",
                                             "num_rmids")
        assert "mbm_L3_assignments" not in entries(m, "")
        with pytest.raises(SimError):
            resolve(m, ("info", "L3_MON", "mbm_assign_mode"))


def test_mode_switch_drops_assignments_and_rearms_on_mkdir() -> None:
    m = model()
    m.mkdir(("mon_groups", "a"))
    write(m, "info/L3_MON/mbm_assign_on_mkdir", b"0")
    write(m, "info/L3_MON/event_configs/mbm_total_bytes/event_filter", b"local_reads\n")
    write(m, "info/L3_MON/mbm_assign_mode", b"default\n")
    assert read(m, "info/L3_MON/mbm_assign_mode") == "[default]\nmbm_event\n"
    # default mode: the assignment files answer EINVAL with the status text
    for path in ("info/L3_MON/available_mbm_cntrs", "info/L3_MON/mbm_assign_on_mkdir",
                 "info/L3_MON/event_configs/mbm_total_bytes/event_filter",
                 "mon_groups/a/mbm_L3_assignments"):
        assert errno_of(lambda p=path: read(m, p)) == errno.EINVAL  # type: ignore[misc]
        assert status(m) == "mbm_event counter assignment mode is not enabled\n"
    assert read(m, "info/L3_MON/num_mbm_cntrs") == "0=8;1=8\n"  # no mode check
    # BMEC files are back, and mon_features lists them
    assert "mbm_total_bytes_config" in entries(m, "info/L3_MON")
    assert read(m, "info/L3_MON/mon_features") == (
        "llc_occupancy\nmbm_total_bytes\nmbm_total_bytes_config\n"
        "mbm_local_bytes\nmbm_local_bytes_config\n"
    )
    assert read(m, "mon_groups/a/mon_data/mon_L3_00/mbm_total_bytes") == "0\n"  # by RMID
    write(m, "info/L3_MON/mbm_assign_mode", b"mbm_event\n")
    assert read(m, "info/L3_MON/mbm_assign_on_mkdir") == "1\n"
    assert read(m, "info/L3_MON/available_mbm_cntrs") == "0=8;1=8\n"  # all dropped
    assert read(m, "info/L3_MON/event_configs/mbm_total_bytes/event_filter").count(",") == 6
    assert read(m, "mon_groups/a/mbm_L3_assignments") == (
        "mbm_total_bytes:0=_;1=_\nmbm_local_bytes:0=_;1=_\n"
    )
    assert read(m, "mon_groups/a/mon_data/mon_L3_00/mbm_total_bytes") == "Unassigned\n"
    assert read(m, "mon_data/mon_L3_00/mbm_local_bytes") == "Unassigned\n"  # root too


def test_mode_write_errors() -> None:
    m = model()
    path = "info/L3_MON/mbm_assign_mode"
    m.status = "before\n"
    assert errno_of(lambda: write(m, path, b"default")) == errno.EINVAL  # no newline
    assert m.status == "before\n"  # failed before rdt_last_cmd_clear()
    assert errno_of(lambda: write(m, path, b"mbm_event \n")) == errno.EINVAL
    assert status(m) == "Unsupported assign mode\n"
    write(m, path, b"mbm_event\n")  # the mode it is in: nothing happens
    assert status(m) == "ok\n"
    aet = model("intel-aet")
    assert read(aet, path) == "[default]\n"
    assert errno_of(lambda: write(aet, path, b"mbm_event\n")) == errno.EINVAL
    assert status(aet) == "mbm_event mode is not supported\n"
    write(aet, path, b"default\n")
    assert "num_mbm_cntrs" not in entries(aet, "info/L3_MON")


def test_assign_on_mkdir_parses_like_kstrtobool() -> None:
    m = model()
    path = "info/L3_MON/mbm_assign_on_mkdir"
    for text, value in ((b"0", "0"), (b"on\n", "1"), (b"N", "0"), (b"yes", "1"),
                        (b"off", "0"), (b"1", "1")):
        write(m, path, text)
        assert read(m, path) == f"{value}\n"
    for bad in (b"", b"2", b"o", b"x\n"):
        assert errno_of(lambda b=bad: write(m, path, b)) == errno.EINVAL  # type: ignore[misc]
    write(m, path, b"0")
    m.mkdir(("mon_groups", "a"))
    assert read(m, "mon_groups/a/mbm_L3_assignments") == (
        "mbm_total_bytes:0=_;1=_\nmbm_local_bytes:0=_;1=_\n"
    )


# ---------------------------------------------------- counters run out
def test_mkdir_succeeds_when_counters_run_out_total_before_local() -> None:
    m = model()
    for name in "abc":
        m.mkdir(("mon_groups", name))
        assert status(m) == "ok\n"
    assert read(m, "info/L3_MON/available_mbm_cntrs") == "0=0;1=0\n"
    m.mkdir(("mon_groups", "d"))  # no error
    assert status(m) == (
        "Failed to allocate counter for mbm_total_bytes in domain 0\n"
        "Failed to allocate counter for mbm_local_bytes in domain 0\n"
    )
    assert read(m, "mon_groups/d/mon_data/mon_L3_01/mbm_total_bytes") == "Unassigned\n"
    m.rmdir(("mon_groups", "a"))  # rmdir gives its counters back
    assert read(m, "info/L3_MON/available_mbm_cntrs") == "0=2;1=2\n"
    # one counter left per domain: total gets both domains, local fails at 0
    write(m, "info/L3_MON/mbm_assign_on_mkdir", b"1")
    m.mkdir(("mon_groups", "e"))
    m.mkdir(("mon_groups", "f"))
    assert read(m, "info/L3_MON/available_mbm_cntrs") == "0=0;1=0\n"
    assert read(m, "mon_groups/f/mbm_L3_assignments") == (
        "mbm_total_bytes:0=_;1=_\nmbm_local_bytes:0=_;1=_\n"
    )
    m2 = model(mbm_cntrs=5)  # root 2, a 2, then 1 left per domain
    m2.mkdir(("mon_groups", "a"))
    m2.mkdir(("mon_groups", "b"))
    assert m2.status == "Failed to allocate counter for mbm_local_bytes in domain 0\n"
    assert read(m2, "mon_groups/b/mbm_L3_assignments") == (
        "mbm_total_bytes:0=e;1=e\nmbm_local_bytes:0=_;1=_\n"
    )


def test_ctrl_group_rmdir_frees_its_children_counters() -> None:
    m = model()
    m.mkdir(("c",))
    m.mkdir(("c", "mon_groups", "m"))
    assert read(m, "info/L3_MON/available_mbm_cntrs") == "0=2;1=2\n"
    m.rmdir(("c",))
    assert read(m, "info/L3_MON/available_mbm_cntrs") == "0=6;1=6\n"


# ------------------------------------------------- mbm_L3_assignments
def test_assignment_writes_and_their_errors() -> None:
    m = model()
    m.mkdir(("mon_groups", "a"))
    path = "mon_groups/a/mbm_L3_assignments"
    write(m, path, b"mbm_total_bytes:0=_\n")
    assert read(m, path) == "mbm_total_bytes:0=_;1=e\nmbm_local_bytes:0=e;1=e\n"
    write(m, path, b"mbm_local_bytes:*=_\nmbm_total_bytes:1=_;0=e\n")
    assert read(m, path) == "mbm_total_bytes:0=e;1=_\nmbm_local_bytes:0=_;1=_\n"
    write(m, path, b"mbm_total_bytes:*=e;1=_\n")  # nothing after '*' counts
    assert read(m, path) == "mbm_total_bytes:0=e;1=e\nmbm_local_bytes:0=_;1=_\n"
    write(m, path, b"mbm_local_bytes: 0=e ;\n")  # strim(); an empty rest ends it
    assert read(m, path) == "mbm_total_bytes:0=e;1=e\nmbm_local_bytes:0=e;1=_\n"
    cases = [
        (b"mbm_total_bytes:0=e", errno.EINVAL, None),  # no trailing newline
        (b"llc_occupancy:0=e\n", errno.ENOENT, "Invalid event llc_occupancy\n"),
        (b"\n", errno.ENOENT, "Invalid event \n"),
        (b"mbm_total_bytes:x=e\n", errno.EINVAL, "Missing domain id\n"),
        (b"mbm_total_bytes:7=e\n", errno.EINVAL, "Invalid domain id 7\n"),
        (b"mbm_total_bytes:0=ee\n", errno.EINVAL,
         "Assign operation 'mbm_total_bytes:0=ee' failed\n"),
        (b"mbm_total_bytes:0\n", errno.EINVAL,
         "Assign operation 'mbm_total_bytes:0=(null)' failed\n"),
        (b"mbm_total_bytes:*=x\n", errno.EINVAL,
         "Assign operation 'mbm_total_bytes:*=x' failed\n"),
    ]
    for data, err, text in cases:
        m.status = "before\n"
        assert errno_of(lambda d=data: write(m, path, d)) == err  # type: ignore[misc]
        assert m.status == (text if text is not None else "before\n"), data
    # the first line is applied before the second fails
    assert errno_of(lambda: write(m, path, b"mbm_local_bytes:1=e\nbogus:0=e\n")) == errno.ENOENT
    assert read(m, path) == "mbm_total_bytes:0=e;1=e\nmbm_local_bytes:0=e;1=e\n"
    write(m, path, b"mbm_total_bytes\n")  # no ':' : nothing to do
    write(m, "info/L3_MON/mbm_assign_mode", b"default\n")
    assert errno_of(lambda: write(m, path, b"mbm_total_bytes:0=e\n")) == errno.EINVAL
    assert status(m) == "mbm_event mode is not enabled\n"


def test_star_assignment_out_of_counters_is_partial_and_enospc() -> None:
    m = model(mbm_cntrs=3)  # root holds 2 per domain, 1 left
    m.mkdir(("mon_groups", "a"))  # a: total in 0 and 1, local fails
    m.mkdir(("mon_groups", "b"))
    write(m, "mon_groups/a/mbm_L3_assignments", b"mbm_total_bytes:1=_\n")
    # b: total in domain 0 fails at once; free one in domain 1 only
    assert errno_of(
        lambda: write(m, "mon_groups/b/mbm_L3_assignments", b"mbm_total_bytes:*=e\n")
    ) == errno.ENOSPC
    assert status(m) == (
        "Failed to allocate counter for mbm_total_bytes in domain 0\n"
        "Assign operation 'mbm_total_bytes:*=e' failed\n"
    )
    write(m, "mon_groups/a/mbm_L3_assignments", b"mbm_total_bytes:0=_\n")
    write(m, "mon_groups/b/mbm_L3_assignments", b"mbm_local_bytes:*=e\n")
    assert read(m, "mon_groups/b/mbm_L3_assignments") == (
        "mbm_total_bytes:0=_;1=_\nmbm_local_bytes:0=e;1=e\n"
    )
    assert errno_of(
        lambda: write(m, "mon_groups/a/mbm_L3_assignments", b"mbm_local_bytes:1=e\n")
    ) == errno.ENOSPC
    assert status(m) == (
        "Failed to allocate counter for mbm_local_bytes in domain 1\n"
        "Assign operation 'mbm_local_bytes:1=e' failed\n"
    )


# ------------------------------------------------------------- values
def busy_model(**extra: object) -> Model:
    return model(
        processes=[{"name": "me", "match": {"pid": 1}, "split": "main",
                    "timeline": [{"t": 0, "mbm_total": {"*": "1MiB"},
                                  "mbm_local": {"*": "1MiB"}}]}],
        **extra,
    )


def test_new_assignment_resets_and_reassignment_does_not() -> None:
    m = busy_model()
    m.mkdir(("mon_groups", "a"))
    m.write_tasks(m.group_at(("mon_groups", "a")), b"1\n", ROOT)  # type: ignore[arg-type]
    value = "mon_groups/a/mon_data/mon_L3_00/mbm_total_bytes"
    advance(m, 10)
    assert read(m, value) == f"{10 * MiB}\n"
    write(m, "mon_groups/a/mbm_L3_assignments", b"mbm_total_bytes:0=e\n")  # has one: no-op
    assert read(m, value) == f"{10 * MiB}\n"
    write(m, "mon_groups/a/mbm_L3_assignments", b"mbm_total_bytes:0=_\n")
    assert read(m, value) == "Unassigned\n"
    assert read(m, "mon_groups/a/mon_data/mon_L3_01/mbm_total_bytes") == f"{10 * MiB}\n"
    advance(m, 5)
    write(m, "mon_groups/a/mbm_L3_assignments", b"mbm_total_bytes:0=e\n")  # new: reset
    assert read(m, value) == "0\n"
    advance(m, 2)
    assert read(m, value) == f"{2 * MiB}\n"
    # an event_filter change resets every counter of that event only
    write(m, "info/L3_MON/event_configs/mbm_total_bytes/event_filter",
          b"local_reads, remote_reads\n")
    assert read(m, "info/L3_MON/event_configs/mbm_total_bytes/event_filter") == (
        "local_reads,remote_reads\n"
    )
    assert read(m, value) == "0\n"
    assert read(m, "mon_groups/a/mon_data/mon_L3_00/mbm_local_bytes") == f"{17 * MiB}\n"
    advance(m, 1)
    write(m, "info/L3_MON/event_configs/mbm_total_bytes/event_filter",
          b"remote_reads,local_reads\n")  # the same set: no reset
    assert read(m, value) == f"{MiB}\n"
    assert errno_of(lambda: write(
        m, "info/L3_MON/event_configs/mbm_total_bytes/event_filter", b"local_reads,bogus\n"
    )) == errno.EINVAL
    assert status(m) == "Invalid memory transaction type bogus\n"


def test_ctrl_group_sums_assigned_children_and_is_unassigned_only_without_any() -> None:
    m = busy_model()
    m.mkdir(("c",))
    m.mkdir(("c", "mon_groups", "m"))
    ctrl, mon = m.group_at(("c",)), m.group_at(("c", "mon_groups", "m"))
    assert ctrl is not None and mon is not None
    m.write_tasks(ctrl, b"1\n", ROOT)
    m.write_tasks(mon, b"1\n", ROOT)
    advance(m, 3)
    write(m, "c/mbm_L3_assignments", b"mbm_total_bytes:*=_\n")
    assert read(m, "c/mon_data/mon_L3_00/mbm_total_bytes") == f"{3 * MiB}\n"
    write(m, "c/mon_groups/m/mbm_L3_assignments", b"mbm_total_bytes:*=_\n")
    assert read(m, "c/mon_data/mon_L3_00/mbm_total_bytes") == "Unassigned\n"
    assert read(m, "c/mon_data/mon_L3_00/llc_occupancy") == "0\n"  # not an MBM event


def test_scheduled_mode_switch_and_filter_actions() -> None:
    m = model(faults=[
        {"at": 5, "action": "assign_mode", "value": "default"},
        {"at": 6, "action": "assign_mode", "value": "mbm_event"},
        {"at": 7, "action": "event_filter", "event": "mbm_local_bytes",
         "value": "dirty_victim_writes_all"},
        {"at": 8, "action": "assign_mode", "value": "bogus"},
    ])
    advance(m, 5)
    assert m.state()["mbm_assign_mode"] == "default"
    advance(m, 2)
    assert m.state()["mbm_assign_mode"] == "mbm_event"
    assert read(m, "info/L3_MON/event_configs/mbm_local_bytes/event_filter") == (
        "dirty_victim_writes_all\n"
    )
    advance(m, 1)
    assert status(m) == "Unsupported assign mode\n"


# --------------------------------------------------- the kernel parsers
@pytest.mark.parametrize(
    ("text", "base", "value"),
    [("12", 10, 12), ("+7", 10, 7), ("3\n", 10, 3), ("0x1f", 16, 31), ("1F", 16, 31),
     ("", 10, None), ("-1", 10, None), ("1 ", 10, None), ("0x", 16, None),
     ("0x10", 10, None), (str(2**64), 10, None), (None, 10, None)],
)
def test_kstrtoul(text: str | None, base: int, value: int | None) -> None:
    assert kstrtoul(text, base) == value


def test_kstrtobool_and_strsep() -> None:
    assert [kstrtobool(t) for t in ("Yes", "t", "1x", "no", "F", "0", "On", "oFF")] == [
        True, True, True, False, False, False, True, False]
    assert [kstrtobool(t) for t in ("", "o", "ox", "2")] == [None] * 4
    assert strsep("a;b;c", ";") == ("a", "b;c")
    assert strsep("a", ";") == ("a", None)
    assert strsep(None, ";") == (None, None)


# ------------------------------------------- arm64 MPAM (Linux 7.2 resctrl)
ASSIGN_OF = "mon_groups/{}/mbm_L3_assignments"


def test_counter_assignment_is_fixed_in_mbm_event_mode() -> None:
    m = model("arm64-mpam")
    assert read(m, "info/L3_MON/mbm_assign_mode") == "[mbm_event]\n"
    write(m, "info/L3_MON/mbm_assign_mode", b"mbm_event\n")  # the current one: no-op
    assert errno_of(lambda: write(m, "info/L3_MON/mbm_assign_mode", b"default\n")) == (
        errno.EINVAL)
    assert status(m) == "Counter assignment mode is not configurable\n"
    assert _entries(m, "info/L3_MON/event_configs") == ["mbm_total_bytes"]
    flt = "info/L3_MON/event_configs/mbm_total_bytes/event_filter"
    node = resolve(m, tuple(flt.split("/")))
    assert isinstance(node, File) and node.mode == 0o444
    assert read(m, flt).startswith("local_reads,remote_reads,")
    assert errno_of(lambda: write(m, flt, b"local_reads\n")) == errno.EPERM
    assert status(m) == "event_filter is not configurable\n"
    # the default group holds one counter per domain (total only)
    assert read(m, "info/L3_MON/num_mbm_cntrs") == "0=8;1=8\n"
    assert read(m, "info/L3_MON/available_mbm_cntrs") == "0=7;1=7\n"
    assert read(m, "mbm_L3_assignments") == "mbm_total_bytes:0=e;1=e\n"


def test_out_of_counters_a_star_assignment_carries_on_over_the_domains() -> None:
    m = model("arm64-mpam", mbm_cntrs=2)  # the root holds one per domain
    m.mkdir(("mon_groups", "a"))
    m.mkdir(("mon_groups", "b"))  # mkdir never fails for want of a counter
    assert status(m) == (
        "Failed to allocate counter for mbm_total_bytes in domain 0\n"
        "Failed to allocate counter for mbm_total_bytes in domain 1\n")
    assert read(m, "mon_groups/b/mon_data/mon_L3_00/mbm_total_bytes") == "Unassigned\n"
    write(m, ASSIGN_OF.format("a"), b"mbm_total_bytes:0=_\n")
    # domain 0 is free now, domain 1 is not: 7.2 assigns 0 and fails on 1
    assert errno_of(lambda: write(m, ASSIGN_OF.format("b"), b"mbm_total_bytes:*=e\n")) == (
        errno.ENOSPC)
    assert status(m) == (
        "Failed to allocate counter for mbm_total_bytes in domain 1\n"
        "Assign operation 'mbm_total_bytes:*=e' failed\n")
    assert read(m, ASSIGN_OF.format("b")) == "mbm_total_bytes:0=e;1=_\n"
    assert errno_of(lambda: write(m, ASSIGN_OF.format("b"), b"mbm_local_bytes:0=e\n")) == (
        errno.ENOENT)
    assert status(m) == "Invalid event mbm_local_bytes\n"


def _entries(m: Model, path: str) -> list[str]:
    node = resolve(m, tuple(path.split("/")))
    assert isinstance(node, Dir), path
    return sorted(node.entries)
