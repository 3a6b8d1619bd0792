"""The simulator's state machine and scenario parser, without FUSE.

Real child processes stand in for tasks: tids, exits and threads are read
from the real /proc.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from ceilometer_cmt.simulator import procfs
from ceilometer_cmt.simulator.errors import SimError
from ceilometer_cmt.simulator.groups import Caller
from ceilometer_cmt.simulator.model import Model
from ceilometer_cmt.simulator.scenario import (
    Fault,
    ScenarioError,
    loads_scenario,
    parse_quantity,
    parse_scenario,
)
from ceilometer_cmt.simulator.timeline import ManualClock
from ceilometer_cmt.simulator.topology import format_cpu_list, format_cpu_mask, get_topology
from ceilometer_cmt.simulator.tree import Dir, File, resolve
from ceilometer_cmt.simulator.writes import kstrtoint, parse_cpu_list, parse_cpu_mask

MiB = 1024 * 1024
ROOT = Caller(uid=0, pid=os.getpid())

THREADS = r"""
import sys, threading, time
def idle():
    time.sleep(300)
for _ in range(int(sys.argv[1])):
    threading.Thread(target=idle, daemon=True).start()
print("ready", flush=True)
sys.stdin.readline()
threading.Thread(target=idle, daemon=True).start()
print("more", flush=True)
time.sleep(300)
"""


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []

    def _spawn(threads: int | None = None) -> subprocess.Popen[str]:
        if threads is None:
            argv = ["sleep", "300"]
        else:
            argv = [sys.executable, "-c", THREADS, str(threads)]
        p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(p)
        if threads is not None:
            assert p.stdout is not None
            assert p.stdout.readline() == "ready\n"
        return p

    yield _spawn
    for p in procs:
        p.kill()
        p.wait()


def missing_pid() -> int:
    with open("/proc/sys/kernel/pid_max") as f:
        return int(f.read()) + 1


def model(topology: str = "intel-2s", scenario: dict[str, object] | None = None) -> Model:
    topo = get_topology(topology)
    sc = parse_scenario({"clock": "manual", "limbo_seconds": 0, **(scenario or {})}, topo)
    return Model(topo, sc)


def errno_of(fn: Callable[[], object]) -> int:
    with pytest.raises(SimError) as info:
        fn()
    return info.value.errno


def read(m: Model, *path: str) -> str:
    node = resolve(m, tuple(path))
    assert isinstance(node, File)
    return node.read()


def write(m: Model, data: bytes, *path: str) -> None:
    node = resolve(m, tuple(path))
    assert isinstance(node, File) and node.write is not None
    node.write(data, ROOT)


def advance(m: Model, seconds: float) -> None:
    assert isinstance(m.clock, ManualClock)
    m.clock.advance(seconds)
    m.advance()


# ------------------------------------------------------------------ RMIDs


def test_rmids_exhausted_gives_enospc_and_kernel_status() -> None:
    m = model(scenario={"rmids": 4})  # RMID 0 is the root's: 3 left
    for name in "abc":
        m.mkdir(("mon_groups", name))
        assert m.status == ""
    assert errno_of(lambda: m.mkdir(("mon_groups", "d"))) == errno.ENOSPC
    assert read(m, "info", "last_cmd_status") == "Out of RMIDs\n"
    m.rmdir(("mon_groups", "a"))
    m.mkdir(("mon_groups", "d"))
    assert read(m, "info", "last_cmd_status") == "ok\n"


def test_freed_rmid_sits_in_limbo_then_is_reused() -> None:
    m = model(scenario={"rmids": 2, "limbo_seconds": 5})
    m.mkdir(("mon_groups", "a"))
    m.rmdir(("mon_groups", "a"))
    assert errno_of(lambda: m.mkdir(("mon_groups", "b"))) == errno.EBUSY
    assert m.status == "Out of RMIDs\n"
    advance(m, 4.9)
    assert errno_of(lambda: m.mkdir(("mon_groups", "b"))) == errno.EBUSY
    advance(m, 0.2)
    m.mkdir(("mon_groups", "b"))
    assert m.state()["limbo_rmids"] == 0


def test_rmids_are_handed_out_least_recently_used_first() -> None:
    m = model(scenario={"rmids": 4})
    a = m.mkdir(("mon_groups", "a"))
    m.rmdir(("mon_groups", "a"))
    b = m.mkdir(("mon_groups", "b"))
    assert b.rmid != a.rmid


def test_closids_exhausted_and_rmid_failure_releases_the_closid() -> None:
    m = model(scenario={"closids": 2, "rmids": 2})
    m.mkdir(("c1",))
    assert errno_of(lambda: m.mkdir(("c2",))) == errno.ENOSPC
    assert m.status == "Out of CLOSIDs\n"
    m.rmdir(("c1",))
    m.mkdir(("mon_groups", "m"))  # takes the last RMID
    assert errno_of(lambda: m.mkdir(("c2",))) == errno.ENOSPC
    assert m.status == "Out of RMIDs\n"
    assert m.state()["free_closids"] == 1


def test_rmdir_of_control_group_frees_its_monitor_groups_rmids() -> None:
    m = model(scenario={"rmids": 4})
    m.mkdir(("c1",))
    m.mkdir(("c1", "mon_groups", "x"))
    m.mkdir(("c1", "mon_groups", "y"))
    assert m.state()["free_rmids"] == 0
    m.rmdir(("c1",))
    assert m.state()["free_rmids"] == 3
    with pytest.raises(SimError):
        resolve(m, ("c1", "mon_groups", "x", "tasks"))


def test_set_rmids_at_run_time_and_scheduled() -> None:
    m = model(scenario={"faults": [{"at": 10, "action": "set_rmids", "value": 2}]})
    m.mkdir(("mon_groups", "a"))
    assert read(m, "info", "L3_MON", "num_rmids") == "176\n"
    advance(m, 10)
    assert read(m, "info", "L3_MON", "num_rmids") == "2\n"
    assert errno_of(lambda: m.mkdir(("mon_groups", "b"))) == errno.ENOSPC
    m.set_rmids(3)
    m.mkdir(("mon_groups", "b"))


def test_mkdir_only_at_root_and_in_mon_groups() -> None:
    m = model()
    m.mkdir(("c1",))
    m.mkdir(("c1", "mon_groups", "m"))
    assert errno_of(lambda: m.mkdir(("c1", "x"))) == errno.EPERM
    assert errno_of(lambda: m.mkdir(("c1", "mon_groups", "m", "x"))) == errno.EPERM
    assert errno_of(lambda: m.mkdir(("mon_groups", "mon_groups"))) == errno.EPERM
    assert errno_of(lambda: m.mkdir(("info", "x"))) == errno.ENODEV
    assert errno_of(lambda: m.mkdir(("bad\nname",))) == errno.EINVAL
    assert errno_of(lambda: m.mkdir(("c1",))) == errno.EEXIST
    assert errno_of(lambda: m.rmdir(("info",))) == errno.EPERM
    assert errno_of(lambda: m.rmdir(("c1", "mon_groups"))) == errno.EPERM
    assert errno_of(lambda: m.rmdir(("nope",))) == errno.ENOENT


def test_rename_moves_a_monitor_group_between_control_groups(spawn) -> None:  # type: ignore[no-untyped-def]
    m = model()
    p = spawn()
    m.mkdir(("c1",))
    m.mkdir(("c2",))
    m.mkdir(("c1", "mon_groups", "m"))
    write(m, b"%d" % p.pid, "c1", "tasks")
    write(m, b"%d" % p.pid, "c1", "mon_groups", "m", "tasks")
    m.rename(("c1", "mon_groups", "m"), ("c2", "mon_groups", "m2"))
    assert read(m, "c2", "tasks") == f"{p.pid}\n"
    assert read(m, "c1", "tasks") == ""
    assert errno_of(lambda: m.rename(("c1",), ("c3",))) == errno.EPERM
    assert m.status == "Source must be a MON group\n"


# ------------------------------------------------------------------ tasks


def test_tasks_write_errors_have_kernel_errno_and_status(spawn) -> None:  # type: ignore[no-untyped-def]
    m = model()
    m.mkdir(("mon_groups", "a"))
    gone = missing_pid()
    assert errno_of(lambda: write(m, b"%d\n" % gone, "mon_groups", "a", "tasks")) == errno.ESRCH
    assert m.status == f"No task {gone}\nError while processing task {gone}\n"
    assert errno_of(lambda: write(m, b"12ab\n", "mon_groups", "a", "tasks")) == errno.EINVAL
    assert m.status == "Task list parsing error pid 12ab\n"
    assert errno_of(lambda: write(m, b"-5", "mon_groups", "a", "tasks")) == errno.EINVAL
    assert m.status == "Invalid pid -5\n"
    p = spawn()
    write(m, b"%s\n" % hex(p.pid).encode(), "mon_groups", "a", "tasks")  # kstrtoint base 0
    assert m.status == ""
    assert read(m, "mon_groups", "a", "tasks") == f"{p.pid}\n"


def test_comma_separated_tasks_stop_at_the_first_failure(spawn) -> None:  # type: ignore[no-untyped-def]
    m = model()
    m.mkdir(("mon_groups", "a"))
    p1, p2 = spawn(), spawn()
    gone = missing_pid()
    with pytest.raises(SimError):
        write(m, b"%d,%d,%d\n" % (p1.pid, gone, p2.pid), "mon_groups", "a", "tasks")
    assert read(m, "mon_groups", "a", "tasks") == f"{p1.pid}\n"


def test_task_is_in_one_control_and_one_monitor_group(spawn) -> None:  # type: ignore[no-untyped-def]
    m = model()
    p = spawn()
    tid = b"%d" % p.pid
    m.mkdir(("mon_groups", "a"))
    m.mkdir(("mon_groups", "b"))
    m.mkdir(("c1",))
    m.mkdir(("c1", "mon_groups", "m"))
    write(m, tid, "mon_groups", "a", "tasks")
    write(m, tid, "mon_groups", "b", "tasks")
    assert read(m, "mon_groups", "a", "tasks") == ""
    assert read(m, "mon_groups", "b", "tasks") == f"{p.pid}\n"
    assert str(p.pid) in read(m, "tasks").split()  # root lists its monitor groups' tasks
    # A monitor group only takes tasks of its own control group.
    assert errno_of(lambda: write(m, tid, "c1", "mon_groups", "m", "tasks")) == errno.EINVAL
    assert m.status == (
        f"Can't move task to different control group\nError while processing task {p.pid}\n"
    )
    # Into a control group: out of every root group, into c1's own RMID.
    write(m, tid, "c1", "tasks")
    assert read(m, "mon_groups", "b", "tasks") == ""
    assert str(p.pid) not in read(m, "tasks").split()
    write(m, tid, "c1", "mon_groups", "m", "tasks")
    assert read(m, "c1", "tasks") == f"{p.pid}\n"  # a control group lists its children's
    assert read(m, "c1", "mon_groups", "m", "tasks") == f"{p.pid}\n"
    write(m, tid, "c1", "tasks")  # back to c1's own RMID
    assert read(m, "c1", "mon_groups", "m", "tasks") == ""
    m.rmdir(("c1",))  # tasks go back to the root
    assert str(p.pid) in read(m, "tasks").split()


def test_exited_task_disappears_and_reused_tid_is_not_a_member(spawn) -> None:  # type: ignore[no-untyped-def]
    m = model()
    m.mkdir(("mon_groups", "a"))
    p = spawn()
    write(m, b"%d" % p.pid, "mon_groups", "a", "tasks")
    start = m.tasks[p.pid].start
    p.kill()
    p.wait()
    assert read(m, "mon_groups", "a", "tasks") == ""
    # A task with the same tid but another start time is someone else.
    q = spawn()
    write(m, b"%d" % q.pid, "mon_groups", "a", "tasks")
    m.tasks[q.pid].start = start - 1 if start else 1
    assert read(m, "mon_groups", "a", "tasks") == ""


def test_threads_started_after_assignment_inherit_the_group(spawn) -> None:  # type: ignore[no-untyped-def]
    m = model()
    m.mkdir(("mon_groups", "a"))
    p = spawn(threads=2)
    before = procfs.threads_of("/proc", p.pid)
    assert len(before) == 3
    time.sleep(0.05)  # start times have a 10 ms tick: keep "before" strictly before
    write(m, b"%d" % p.pid, "mon_groups", "a", "tasks")  # the main thread only
    assert read(m, "mon_groups", "a", "tasks") == f"{p.pid}\n"
    time.sleep(0.05)
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write("go\n")
    p.stdin.flush()
    assert p.stdout.readline() == "more\n"
    (new,) = set(procfs.threads_of("/proc", p.pid)) - set(before)
    assert read(m, "mon_groups", "a", "tasks").split() == [str(p.pid), str(new)]
    root = read(m, "tasks").split()
    for old in before[1:]:
        assert str(old) in root


def test_kstrtoint_matches_the_kernel() -> None:
    assert kstrtoint("42") == 42
    assert kstrtoint("0x2a") == 42
    assert kstrtoint("052") == 42
    assert kstrtoint("+42") == 42
    assert kstrtoint("-1") == -1
    for bad in ("", "4 2", "0x", "09", "abc", "2147483648", "1.0"):
        assert kstrtoint(bad) is None


# ------------------------------------------------------------------- cpus


def test_cpu_formats() -> None:
    assert format_cpu_mask({0, 1, 2, 3}, 8) == "0f"
    assert format_cpu_mask(set(range(40)), 40) == "ff,ffffffff"
    assert format_cpu_mask(set(), 64) == "00000000,00000000"
    assert format_cpu_list([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert parse_cpu_mask("ff,00000001", 40) == {0, 32, 33, 34, 35, 36, 37, 38, 39}
    assert parse_cpu_mask("1,00000000,00000000", 40) is None
    assert parse_cpu_list("0-7:2/4") == {0, 1, 4, 5}
    assert parse_cpu_list("3-1") is None


def test_cpus_move_between_groups_like_the_kernel() -> None:
    m = model()
    m.mkdir(("c1",))
    m.mkdir(("c1", "mon_groups", "m"))
    write(m, b"0-3\n", "c1", "cpus_list")
    assert read(m, "c1", "cpus_list") == "0-3\n"
    assert read(m, "cpus_list") == "4-39\n"
    assert read(m, "c1", "cpus") == "00,0000000f\n"
    with pytest.raises(SimError):
        write(m, b"4\n", "c1", "mon_groups", "m", "cpus_list")
    assert m.status == "Can only add CPUs to mongroup that belong to parent\n"
    write(m, b"2\n", "c1", "mon_groups", "m", "cpus_list")
    assert read(m, "c1", "mon_groups", "m", "cpus_list") == "2\n"
    with pytest.raises(SimError):
        write(m, b"0-38\n", "cpus_list")
    assert m.status == "Can't drop CPUs from default group\n"
    with pytest.raises(SimError):
        write(m, b"77\n", "c1", "cpus_list")
    assert m.status == "Can only assign online CPUs\n"
    with pytest.raises(SimError):
        write(m, b"zz\n", "c1", "cpus")
    assert m.status == "Bad CPU list/mask\n"
    m.rmdir(("c1",))
    assert read(m, "cpus_list") == "0-39\n"


# -------------------------------------------------------------- schemata


def test_schemata_validation_messages() -> None:
    m = model()
    m.mkdir(("c1",))
    assert read(m, "c1", "schemata") == "L3:0=fffff;1=fffff\n"
    write(m, b"L3:1=3f0\n", "c1", "schemata")
    assert read(m, "c1", "schemata") == "L3:0=fffff;1=003f0\n"
    assert read(m, "c1", "size") == f"L3:0={30 * MiB};1={30 * MiB // 20 * 6}\n"
    cases = {
        b"L3:0=f0f\n": "The mask f0f has non-consecutive 1-bits\n",
        b"L3:0=fffffff\n": "Mask out of range\n",
        b"L3:0=xyz\n": "Non-hex character in the mask xyz\n",
        b"MB:0=50\n": "Unknown or unsupported resource name 'MB'\n",
        b"L3 0=f\n": "Missing ':'\n",
        b"L3:0=f;0=f\n": "Duplicate domain 0\n",
    }
    for data, status in cases.items():
        with pytest.raises(SimError) as e:
            write(m, data, "c1", "schemata")
        assert e.value.errno == errno.EINVAL
        assert m.status == status, data
    assert errno_of(lambda: write(m, b"L3:0=f", "c1", "schemata")) == errno.EINVAL  # no \n
    # exclusive (resctrl.rst example 4): no way shared with another group,
    # the default group included; then nobody may overlap it
    with pytest.raises(SimError):
        write(m, b"exclusive\n", "c1", "mode")
    assert m.status == "Schemata overlaps\n"
    write(m, b"L3:0=ffff0;1=ffff0\n", "schemata")
    write(m, b"L3:0=f;1=f\n", "c1", "schemata")
    write(m, b"exclusive\n", "c1", "mode")
    write(m, b"exclusive\n", "c1", "mode")  # the same mode again: fine
    assert read(m, "c1", "mode") == "exclusive\n"
    assert read(m, "info", "L3", "bit_usage").startswith("0=SSSSSSSSSSSSSSSSEEEE;1=")
    with pytest.raises(SimError):
        write(m, b"L3:0=1f\n", "schemata")
    assert m.status == "Overlaps with exclusive group\n"
    with pytest.raises(SimError):
        write(m, b"L3:1=1f\n", "c1", "schemata")
    assert m.status == "Overlaps with other group\n"
    with pytest.raises(SimError):
        write(m, b"pseudo-locksetup\n", "c1", "mode")
    assert m.status == "Unknown or unsupported mode\n"
    # a new group gets the ways no exclusive group holds: 0xffff0
    m.mkdir(("c2",))
    assert read(m, "c2", "schemata") == "L3:0=ffff0;1=ffff0\n"
    write(m, b"shareable\n", "c1", "mode")


# ---------------------------------------------------------------- values


def load_of(pid: int, **timeline: object) -> dict[str, object]:
    return {"name": f"p{pid}", "match": {"pid": pid}, "timeline": [{"t": 0, **timeline}]}


def test_mbm_counters_integrate_bandwidth_and_restart_on_recreate(spawn) -> None:  # type: ignore[no-untyped-def]
    p = spawn()
    m = model(scenario={"processes": [
        load_of(p.pid, mbm_total={0: 1000, 1: 10}, mbm_local={0: 600}),
    ]})
    m.mkdir(("mon_groups", "a"))
    write(m, b"%d" % p.pid, "mon_groups", "a", "tasks")
    advance(m, 10)
    mon = ("mon_groups", "a", "mon_data")
    assert read(m, *mon, "mon_L3_00", "mbm_total_bytes") == "10000\n"
    assert read(m, *mon, "mon_L3_01", "mbm_total_bytes") == "100\n"
    assert read(m, *mon, "mon_L3_00", "mbm_local_bytes") == "6000\n"
    assert read(m, *mon, "mon_L3_01", "mbm_local_bytes") == "0\n"
    # the root group saw the process before it was moved: nothing (t=0 move)
    assert read(m, "mon_data", "mon_L3_00", "mbm_total_bytes") == "10000\n"  # includes child
    m.rmdir(("mon_groups", "a"))
    m.mkdir(("mon_groups", "a"))
    assert read(m, *mon, "mon_L3_00", "mbm_total_bytes") == "0\n"
    write(m, b"%d" % p.pid, "mon_groups", "a", "tasks")
    advance(m, 2)
    assert read(m, *mon, "mon_L3_00", "mbm_total_bytes") == "2000\n"


def test_l3_domain_offline_leaves_mon_data_and_its_counters_pause(spawn) -> None:  # type: ignore[no-untyped-def]
    """Every CPU of socket 1 offline: mon_L3_01 leaves every group's mon_data
    and the schemata, a file of it still open answers ENODEV; back online its
    counters go on from where they were (nothing ran there meanwhile)."""
    p = spawn()
    m = model(scenario={"processes": [load_of(p.pid, mbm_total={0: 1000, 1: 10})]})
    m.mkdir(("mon_groups", "a"))
    write(m, b"%d" % p.pid, "mon_groups", "a", "tasks")
    advance(m, 10)
    mon = ("mon_groups", "a", "mon_data")
    kept = resolve(m, (*mon, "mon_L3_01", "mbm_total_bytes"))  # an open file
    assert isinstance(kept, File) and kept.read() == "100\n"
    m.set_l3_online(1, False)
    node = resolve(m, mon)
    assert isinstance(node, Dir) and node.entries == ("mon_L3_00",)
    assert errno_of(lambda: resolve(m, (*mon, "mon_L3_01"))) == errno.ENOENT
    assert errno_of(kept.read) == errno.ENODEV
    assert read(m, "schemata").startswith("L3:0=")
    assert ";1=" not in read(m, "schemata")
    advance(m, 10)
    assert read(m, *mon, "mon_L3_00", "mbm_total_bytes") == "20000\n"  # socket 0 counts on
    m.set_l3_online(1, True)
    advance(m, 10)
    assert read(m, *mon, "mon_L3_01", "mbm_total_bytes") == "200\n"  # 100 + 10 s after
    with pytest.raises(ValueError):
        m.set_l3_online(7, False)


def test_load_is_shared_by_threads_and_follows_their_groups(spawn) -> None:  # type: ignore[no-untyped-def]
    p = spawn(threads=3)  # 4 threads
    m = model(scenario={"processes": [load_of(p.pid, mbm_total={0: 400})]})
    m.mkdir(("mon_groups", "a"))
    tids = procfs.threads_of("/proc", p.pid)
    write(m, b"%d" % tids[0], "mon_groups", "a", "tasks")
    advance(m, 10)
    assert read(m, "mon_groups", "a", "mon_data", "mon_L3_00", "mbm_total_bytes") == "1000\n"
    for tid in tids[1:]:
        write(m, b"%d" % tid, "mon_groups", "a", "tasks")
    advance(m, 10)
    assert read(m, "mon_groups", "a", "mon_data", "mon_L3_00", "mbm_total_bytes") == "5000\n"


def test_occupancy_is_capped_by_the_domain_and_rounded(spawn) -> None:  # type: ignore[no-untyped-def]
    p1, p2 = spawn(), spawn()
    m = model(scenario={"processes": [
        load_of(p1.pid, occupancy={0: "25MiB", 1: "50%"}),
        load_of(p2.pid, occupancy={0: "25MiB"}),
    ]})
    gran = m.topology.occupancy_granularity
    m.mkdir(("mon_groups", "a"))
    m.mkdir(("mon_groups", "b"))
    write(m, b"%d" % p1.pid, "mon_groups", "a", "tasks")
    write(m, b"%d" % p2.pid, "mon_groups", "b", "tasks")
    a0 = int(read(m, "mon_groups", "a", "mon_data", "mon_L3_00", "llc_occupancy"))
    b0 = int(read(m, "mon_groups", "b", "mon_data", "mon_L3_00", "llc_occupancy"))
    a1 = int(read(m, "mon_groups", "a", "mon_data", "mon_L3_01", "llc_occupancy"))
    assert a0 == b0 == (15 * MiB) // gran * gran
    assert a0 + b0 <= 30 * MiB
    assert a1 == (15 * MiB) // gran * gran
    assert a0 % gran == 0


def test_timeline_moves_occupancy_over_time(spawn) -> None:  # type: ignore[no-untyped-def]
    p = spawn()
    m = model("amd-ccx", scenario={"processes": [{
        "match": {"pid": p.pid},
        "timeline": [{"t": 0, "occupancy": {3: 0}}, {"t": 10, "occupancy": {3: "8MiB"}}],
    }]})
    m.mkdir(("mon_groups", "a"))
    write(m, b"%d" % p.pid, "mon_groups", "a", "tasks")
    path = ("mon_groups", "a", "mon_data", "mon_L3_03", "llc_occupancy")
    assert read(m, *path) == "0\n"
    advance(m, 5)
    assert read(m, *path) == f"{4 * MiB}\n"
    advance(m, 50)
    assert read(m, *path) == f"{8 * MiB}\n"


def test_faults_replace_values_and_control_groups_drop_failed_children(spawn) -> None:  # type: ignore[no-untyped-def]
    p1, p2 = spawn(), spawn()
    m = model(scenario={"processes": [
        load_of(p1.pid, mbm_total={0: 100}), load_of(p2.pid, mbm_total={0: 10}),
    ]})
    m.mkdir(("c1",))
    m.mkdir(("c1", "mon_groups", "m"))
    write(m, b"%d" % p1.pid, "c1", "tasks")
    write(m, b"%d" % p2.pid, "c1", "tasks")
    write(m, b"%d" % p2.pid, "c1", "mon_groups", "m", "tasks")
    advance(m, 10)
    total = ("mon_data", "mon_L3_00", "mbm_total_bytes")
    assert read(m, "c1", *total) == "1100\n"
    m.add_fault(Fault("Unavailable", group="c1/mon_groups/*", event="mbm_total_bytes"))
    assert read(m, "c1", "mon_groups", "m", *total) == "Unavailable\n"
    assert read(m, "c1", *total) == "1000\n"
    m.add_fault(Fault("Error", group="c1", domain=0))
    assert read(m, "c1", *total) == "Error\n"  # nothing succeeded: the group's own error
    assert read(m, "c1", "mon_data", "mon_L3_01", "mbm_total_bytes") == "0\n"
    m.clear_faults()
    m.add_fault(Fault("Unassigned", group="c1/mon_groups/m", event="mbm_local_bytes"))
    assert read(m, "c1", "mon_groups", "m", "mon_data", "mon_L3_00", "mbm_local_bytes") == (
        "Unassigned\n"
    )
    assert read(m, "c1", "mon_groups", "m", *total) == "100\n"


def test_scheduled_fault_window_and_counter_reset(spawn) -> None:  # type: ignore[no-untyped-def]
    p = spawn()
    m = model(scenario={
        "processes": [load_of(p.pid, mbm_total={0: 100})],
        "faults": [
            {"at": 5, "until": 8, "group": "mon_groups/a", "value": "Unavailable"},
            {"at": 10, "action": "reset_counters", "group": "mon_groups/*"},
        ],
    })
    m.mkdir(("mon_groups", "a"))
    write(m, b"%d" % p.pid, "mon_groups", "a", "tasks")
    path = ("mon_groups", "a", "mon_data", "mon_L3_00", "mbm_total_bytes")
    advance(m, 4)
    assert read(m, *path) == "400\n"
    advance(m, 2)
    assert read(m, *path) == "Unavailable\n"
    advance(m, 3)
    assert read(m, *path) == "900\n"
    advance(m, 3)
    assert read(m, *path) == "200\n"  # reset at t=10, 2 s since


def test_snc_layout_and_node_sums(spawn) -> None:  # type: ignore[no-untyped-def]
    p = spawn()
    m = model("snc", scenario={"processes": [
        load_of(p.pid, mbm_total={0: 100, 1: 10, 2: 1}),
    ]})
    group = resolve(m, ("mon_data",))
    assert isinstance(group, Dir) and group.entries == ("mon_L3_00", "mon_L3_01")
    l3 = resolve(m, ("mon_data", "mon_L3_00"))
    assert isinstance(l3, Dir)
    assert l3.entries == (
        "llc_occupancy", "mbm_total_bytes", "mbm_local_bytes", "mon_sub_L3_00", "mon_sub_L3_01",
    )
    sub = resolve(m, ("mon_data", "mon_L3_01"))
    assert isinstance(sub, Dir) and "mon_sub_L3_02" in sub.entries
    with pytest.raises(SimError):
        resolve(m, ("mon_data", "mon_L3_00", "mon_sub_L3_02"))
    m.mkdir(("mon_groups", "a"))
    write(m, b"%d" % p.pid, "mon_groups", "a", "tasks")
    advance(m, 10)
    base = ("mon_groups", "a", "mon_data")
    assert read(m, *base, "mon_L3_00", "mon_sub_L3_00", "mbm_total_bytes") == "1000\n"
    assert read(m, *base, "mon_L3_00", "mon_sub_L3_01", "mbm_total_bytes") == "100\n"
    assert read(m, *base, "mon_L3_00", "mbm_total_bytes") == "1100\n"
    assert read(m, *base, "mon_L3_01", "mbm_total_bytes") == "10\n"
    m.add_fault(Fault("Error", group="mon_groups/a", domain=0))
    assert read(m, *base, "mon_L3_00", "mbm_total_bytes") == "100\n"
    m.add_fault(Fault("Error", group="mon_groups/a", domain=1))
    assert read(m, *base, "mon_L3_00", "mbm_total_bytes") == "Unavailable\n"


def test_process_matched_by_cmdline(spawn) -> None:  # type: ignore[no-untyped-def]
    marker = f"guest=instance-{os.getpid():08x},debug-threads=on"
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "-name", marker])
    try:
        m = model(scenario={"processes": [{
            "match": {"cmdline": f"guest=instance-{os.getpid():08x},"},
            "timeline": [{"t": 0, "mbm_local": {1: 50}}],
        }]})
        m.mkdir(("mon_groups", "vm"))
        write(m, b"%d" % p.pid, "mon_groups", "vm", "tasks")
        advance(m, 4)
        assert read(m, "mon_groups", "vm", "mon_data", "mon_L3_01", "mbm_local_bytes") == "200\n"
    finally:
        p.kill()
        p.wait()


# -------------------------------------------------------------- scenario


def test_quantities() -> None:
    assert parse_quantity("8MiB") == 8 * MiB
    assert parse_quantity("1.5GiB/s") == 1.5 * 1024**3
    assert parse_quantity("2MB") == 2_000_000
    assert parse_quantity("30M") == 30_000_000
    assert parse_quantity(512) == 512
    assert parse_quantity("25%", percent_of=400) == 100
    for bad in ("-1", "12 parsecs", "25%", True, None):
        with pytest.raises(ScenarioError):
            parse_quantity(bad)


def test_timeline_integral_is_exact_for_linear_and_repeat() -> None:
    topo = get_topology("intel-2s")
    sc = loads_scenario(
        """
processes:
  - match: {pid: 1}
    timeline:
      - {t: 0, mbm_total: {0: 0}}
      - {t: 10, mbm_total: {0: 100}}
  - match: {pid: 2}
    repeat: true
    interpolate: step
    timeline:
      - {t: 0, mbm_total: {"*": 10}}
      - {t: 5, mbm_total: {"*": 0}}
      - {t: 10, mbm_total: {"*": 0}}
""",
        topo,
    )
    ramp, pulse = sc.processes[0].timeline, sc.processes[1].timeline
    assert ramp.integral("mbm_total", 0, 0, 10) == pytest.approx(500)
    assert ramp.integral("mbm_total", 0, 10, 12) == pytest.approx(200)
    assert ramp.value("mbm_total", 0, 2.5) == pytest.approx(25)
    assert pulse.integral("mbm_total", 1, 0, 30) == pytest.approx(150)
    assert pulse.value("mbm_total", 1, 21) == 10


def test_scenario_errors_say_where() -> None:
    topo = get_topology("intel-2s")
    cases = {
        "processes: [{match: {pid: 1}, timeline: [{t: 0, occupancy: {7: 1MiB}}]}]":
            "no monitoring domain 7",
        "processes: [{match: {pid: 1, comm: x}}]": "exactly one of",
        "faults: [{value: Broken}]": r"faults\[0\]\.value",
        "faults: [{action: set_rmids}]": "needs a value",
        "bogus: 1": "unknown keys",
        "clock: sundial": "scenario.clock",
    }
    for text, message in cases.items():
        with pytest.raises(ScenarioError, match=message):
            loads_scenario(text, topo)
    assert loads_scenario("", topo).processes == ()
    assert loads_scenario('{"rmids": 8}', topo).rmids == 8


def test_sysfs_tree_matches_the_topology(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from ceilometer_cmt.linux.sysfs_cache import read_cache_domains

    topo = get_topology("amd-ccx")
    topo.write_sysfs(str(tmp_path))
    domains = read_cache_domains(str(tmp_path))
    assert [d.id for d in domains] == [c.id for c in topo.l3]
    assert all(d.size == 32 * MiB for d in domains)
