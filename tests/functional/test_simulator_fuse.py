"""The simulator through a real FUSE mount: real syscalls, real errnos.

Needs /dev/fuse, fusermount3 and libfuse3 (Debian fuse3, libfuse3-3) and root.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from ceilometer_cmt.simulator import FSTYPE, Simulator, mount, mount_fstype
from ceilometer_cmt.testing.wait import wait_until
from tests.support.fuse import needs_fuse_root

pytestmark = needs_fuse_root


def cat(path: str) -> str:
    with open(path) as f:
        return f.read()


def write_each(path: str, *chunks: bytes) -> list[int]:
    """One write() per chunk on one fd; the errno of each (0 for success)."""
    results = []
    fd = os.open(path, os.O_WRONLY)
    try:
        for chunk in chunks:
            try:
                assert os.write(fd, chunk) == len(chunk)
                results.append(0)
            except OSError as e:
                results.append(e.errno)
    finally:
        os.close(fd)
    return results


def missing_pid() -> int:
    with open("/proc/sys/kernel/pid_max") as f:
        return int(f.read()) + 1


def test_mount_is_recognisable_and_always_cleaned_up(tmp_path: Any) -> None:
    mnt = str(tmp_path / "rc")
    with mount(mnt, "intel-2s") as s:
        assert mount_fstype(mnt) == FSTYPE == "fuse.cmt-resctrl-sim"
        with open("/proc/self/mountinfo") as f:
            line = next(ln for ln in f if f" {mnt} " in ln)
        assert line.split(" - ")[1].split()[:2] == ["fuse.cmt-resctrl-sim", "resctrl"]
        pid = s.pid
        assert pid is not None
        workdir = os.path.dirname(s.control_path)
    assert mount_fstype(mnt) is None
    assert not os.path.exists(f"/proc/{pid}")
    assert not os.path.exists(workdir)
    assert not os.path.exists(mnt)  # we made it, we removed it
    # Failing inside the block cleans up just the same.
    with pytest.raises(RuntimeError, match="boom"), mount(mnt, "snc"):
        raise RuntimeError("boom")
    assert mount_fstype(mnt) is None


def test_killed_simulator_leaves_no_mount(sim: Callable[..., Simulator]) -> None:
    s = sim()
    assert s.pid is not None
    os.kill(s.pid, signal.SIGKILL)
    wait_until(lambda: mount_fstype(s.mountpoint) is None, timeout=10, interval=0.05,
               what="auto_unmount to remove the killed simulator's mount", error=AssertionError)


def test_info_and_layout(sim: Callable[..., Simulator]) -> None:
    root = sim("amd-ccx").mountpoint
    assert cat(f"{root}/info/L3_MON/num_rmids") == "256\n"
    assert cat(f"{root}/info/L3_MON/mon_features") == (
        "llc_occupancy\nmbm_total_bytes\nmbm_local_bytes\n"
    )
    assert cat(f"{root}/info/L3/cbm_mask") == "ffff\n"
    assert cat(f"{root}/info/L3/num_closids") == "16\n"
    assert cat(f"{root}/info/last_cmd_status") == "ok\n"
    assert sorted(os.listdir(f"{root}/mon_data")) == [f"mon_L3_{i:02d}" for i in range(8)]
    assert sorted(os.listdir(root)) == sorted(
        ["cpus", "cpus_list", "info", "mode", "mon_data", "mon_groups", "schemata", "size",
         "tasks"]
    )
    os.mkdir(f"{root}/mon_groups/m")
    assert sorted(os.listdir(f"{root}/mon_groups/m")) == ["cpus", "cpus_list", "mon_data", "tasks"]
    with pytest.raises(PermissionError):
        os.open(f"{root}/info/L3_MON/num_rmids", os.O_WRONLY)  # EACCES even for root
    with pytest.raises(OSError) as e:
        os.unlink(f"{root}/tasks")
    assert e.value.errno == errno.EPERM


def test_snc_directories(sim: Callable[..., Simulator]) -> None:
    root = sim("snc").mountpoint
    assert sorted(os.listdir(f"{root}/mon_data/mon_L3_01")) == [
        "llc_occupancy", "mbm_local_bytes", "mbm_total_bytes", "mon_sub_L3_02", "mon_sub_L3_03",
    ]
    assert cat(f"{root}/mon_data/mon_L3_01/mon_sub_L3_03/llc_occupancy") == "0\n"


def test_mkdir_enospc_and_limbo_ebusy(sim: Callable[..., Simulator]) -> None:
    s = sim(rmids=3, limbo_seconds=30, clock="manual")
    root = s.mountpoint
    os.mkdir(f"{root}/mon_groups/a")
    os.mkdir(f"{root}/mon_groups/b")
    with pytest.raises(OSError) as e:
        os.mkdir(f"{root}/mon_groups/c")
    assert e.value.errno == errno.ENOSPC
    assert cat(f"{root}/info/last_cmd_status") == "Out of RMIDs\n"
    os.rmdir(f"{root}/mon_groups/a")
    with pytest.raises(OSError) as e:
        os.mkdir(f"{root}/mon_groups/c")
    assert e.value.errno == errno.EBUSY
    s.advance(30)
    os.mkdir(f"{root}/mon_groups/c")
    assert cat(f"{root}/info/last_cmd_status") == "ok\n"
    with pytest.raises(OSError) as e:
        os.mkdir(f"{root}/mon_groups/c/x")
    assert e.value.errno == errno.EPERM
    # exhaustion injected at run time
    s.set_rmids(1)
    os.rmdir(f"{root}/mon_groups/c")
    s.advance(30)
    with pytest.raises(OSError) as e:
        os.mkdir(f"{root}/mon_groups/d")
    assert e.value.errno == errno.ENOSPC
    assert cat(f"{root}/info/L3_MON/num_rmids") == "1\n"


def test_tasks_one_tid_per_write(sim: Callable[..., Simulator], procs: Any) -> None:
    root = sim().mountpoint
    os.mkdir(f"{root}/mon_groups/a")
    os.mkdir(f"{root}/mon_groups/b")
    p1, p2 = procs(), procs()
    gone = missing_pid()
    tasks = f"{root}/mon_groups/a/tasks"
    assert write_each(tasks, b"%d\n" % p1.pid, b"%d\n" % gone, b"junk\n", b"%d\n" % p2.pid) == [
        0, errno.ESRCH, errno.EINVAL, 0,
    ]
    assert cat(f"{root}/info/last_cmd_status") == "ok\n"
    assert cat(tasks) == f"{min(p1.pid, p2.pid)}\n{max(p1.pid, p2.pid)}\n"
    write_each(f"{root}/mon_groups/b/tasks", b"%d\n" % p1.pid)
    assert cat(tasks) == f"{p2.pid}\n"
    assert cat(f"{root}/mon_groups/b/tasks") == f"{p1.pid}\n"
    assert write_each(tasks, b"%d\n" % gone) == [errno.ESRCH]
    assert cat(f"{root}/info/last_cmd_status") == (
        f"No task {gone}\nError while processing task {gone}\n"
    )
    # a control group's tasks file takes the task out of root's monitor groups
    os.mkdir(f"{root}/c1")
    write_each(f"{root}/c1/tasks", b"%d\n" % p1.pid)
    assert cat(f"{root}/mon_groups/b/tasks") == ""
    assert cat(f"{root}/c1/tasks") == f"{p1.pid}\n"
    assert write_each(f"{root}/mon_groups/b/tasks", b"%d\n" % p1.pid) == [errno.EINVAL]
    p2.kill()
    p2.wait()
    assert cat(tasks) == ""
    # shell-style writes (open with O_TRUNC) work too
    with open(f"{root}/tasks", "w") as f:
        f.write(f"{p1.pid}\n")
    assert cat(f"{root}/c1/tasks") == ""
    assert str(p1.pid) in cat(f"{root}/tasks").split()


def test_values_faults_and_restart(sim: Callable[..., Simulator], procs: Any) -> None:
    p = procs()
    s = sim(scenario={
        "clock": "manual",
        "limbo_seconds": 0,
        "processes": [{"match": {"pid": p.pid}, "timeline": [
            {"t": 0, "occupancy": {0: "6MiB"}, "mbm_total": {0: 1000, 1: 100},
             "mbm_local": {0: 700}},
        ]}],
    })
    root = s.mountpoint
    os.mkdir(f"{root}/mon_groups/vm")
    write_each(f"{root}/mon_groups/vm/tasks", b"%d\n" % p.pid)
    s.advance(10)
    data = f"{root}/mon_groups/vm/mon_data"
    gran = 49152
    assert cat(f"{data}/mon_L3_00/llc_occupancy") == f"{6 * 2**20 // gran * gran}\n"
    assert cat(f"{data}/mon_L3_00/mbm_total_bytes") == "10000\n"
    assert cat(f"{data}/mon_L3_01/mbm_total_bytes") == "1000\n"
    assert cat(f"{data}/mon_L3_00/mbm_local_bytes") == "7000\n"
    for value in ("Unavailable", "Error", "Unassigned"):
        s.fault(group="mon_groups/vm", domain=0, event="llc_occupancy", value=value)
        assert cat(f"{data}/mon_L3_00/llc_occupancy") == f"{value}\n"
        assert cat(f"{data}/mon_L3_01/llc_occupancy") == "0\n"
        s.clear_faults()
    s.fault(group="mon_groups/*", value="Unavailable", duration=5)
    assert cat(f"{data}/mon_L3_01/mbm_total_bytes") == "Unavailable\n"
    s.advance(5)
    assert cat(f"{data}/mon_L3_01/mbm_total_bytes") == "1500\n"
    assert s.reset_counters("mon_groups/vm") == 1
    assert cat(f"{data}/mon_L3_01/mbm_total_bytes") == "0\n"
    s.advance(1)
    assert cat(f"{data}/mon_L3_01/mbm_total_bytes") == "100\n"
    # recreated group: counters restart at 0
    os.rmdir(f"{root}/mon_groups/vm")
    os.mkdir(f"{root}/mon_groups/vm")
    assert cat(f"{data}/mon_L3_00/mbm_total_bytes") == "0\n"
    assert cat(f"{data}/mon_L3_00/llc_occupancy") == "0\n"  # its task went to the root


def test_read_is_one_snapshot_per_open(sim: Callable[..., Simulator], procs: Any) -> None:
    p = procs()
    s = sim(scenario={"clock": "manual", "processes": [
        {"match": {"pid": p.pid}, "timeline": [{"t": 0, "mbm_total": {0: 123456789}}]},
    ]})
    root = s.mountpoint
    os.mkdir(f"{root}/mon_groups/vm")
    write_each(f"{root}/mon_groups/vm/tasks", b"%d" % p.pid)
    s.advance(1)
    path = f"{root}/mon_groups/vm/mon_data/mon_L3_00/mbm_total_bytes"
    fd = os.open(path, os.O_RDONLY)
    try:
        head = os.read(fd, 4)
        s.advance(1)
        assert head + os.read(fd, 100) == b"123456789\n"  # the rest of the same snapshot
        assert os.pread(fd, 100, 0) == b"246913578\n"  # offset 0: a fresh value
    finally:
        os.close(fd)
    # a file of a removed group: ENOENT, as the kernel says
    fd = os.open(path, os.O_RDONLY)
    try:
        os.rmdir(f"{root}/mon_groups/vm")
        with pytest.raises(FileNotFoundError):
            os.pread(fd, 100, 0)
    finally:
        os.close(fd)


def test_flock_on_the_root_serialises_processes(sim: Callable[..., Simulator]) -> None:
    root = sim().mountpoint
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        probe = (
            "import fcntl, os, sys\n"
            f"fd = os.open({root!r}, os.O_RDONLY | os.O_DIRECTORY)\n"
            "try:\n"
            "    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
            "except BlockingIOError:\n"
            "    sys.exit(3)\n"
        )
        assert subprocess.run([sys.executable, "-c", probe]).returncode == 3
        fcntl.flock(fd, fcntl.LOCK_UN)
        assert subprocess.run([sys.executable, "-c", probe]).returncode == 0
    finally:
        os.close(fd)


def test_cli_runs_in_foreground_until_sigterm(tmp_path: Any) -> None:
    mnt = str(tmp_path / "cli")
    scenario = tmp_path / "s.yaml"
    scenario.write_text("limbo_seconds: 0\nbackground:\n  occupancy: {'*': 1MiB}\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ceilometer_cmt.simulator", mnt, "--topology", "snc",
         "--scenario", str(scenario), "--rmids", "9"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        def running() -> None:
            assert proc.poll() is None

        wait_until(lambda: mount_fstype(mnt) == FSTYPE, what=f"the simulator to mount {mnt}",
                   timeout=15, interval=0.05, fail=running)
        assert cat(f"{mnt}/info/L3_MON/num_rmids") == "9\n"
        assert int(cat(f"{mnt}/mon_data/mon_L3_00/mon_sub_L3_01/llc_occupancy")) > 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert mount_fstype(mnt) is None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if mount_fstype(mnt) is not None:
            subprocess.run(["fusermount3", "-u", "-z", mnt], check=False)


def test_plugin_resctrl_backend_runs_unchanged_on_the_simulator(
    sim: Callable[..., Simulator], tmp_path: Any
) -> None:
    """The plugin's own backend (mount check on) against the simulator."""
    from ceilometer_cmt.backends.resctrl.backend import ResctrlBackend
    from ceilometer_cmt.readings import InstanceRef
    from ceilometer_cmt.simulator.topology import get_topology
    from ceilometer_cmt.testing.fakehost import StandInQemu

    sysfs = str(tmp_path / "sys")
    get_topology("intel-2s").write_sysfs(sysfs)
    pid_dir = str(tmp_path / "run")
    os.makedirs(pid_dir)
    names = ["instance-0000000a", "instance-0000000b"]
    scenario = {
        "clock": "manual",
        "limbo_seconds": 0,
        "rmids": 2,  # one RMID for two instances
        "processes": [
            {"match": {"cmdline": f"guest={n},"}, "timeline": [
                {"t": 0, "occupancy": {0: "3MiB"}, "mbm_total": {0: 1000}, "mbm_local": {1: 10}},
            ]} for n in names
        ],
    }
    s = sim("intel-2s", scenario)
    qemus = [StandInQemu(n, pid_dir, extra_threads=2).start() for n in names]
    backend = ResctrlBackend(s.mountpoint, sysfs_root=sysfs, pid_dir=pid_dir)
    try:
        refs = [InstanceRef(f"00000000-0000-4000-8000-00000000000{i}", n)
                for i, n in enumerate(names)]
        first = backend.sync(refs)
        assert len(first.readings) == 1 and len(first.unmonitored) == 1
        (uuid, reading), = first.readings.items()
        assert "RMID" in next(iter(first.unmonitored.values()))
        s.advance(10)
        second = backend.sync(refs)
        again = second.readings[uuid]
        gran = 49152
        assert again.occupancy[0] == 3 * 2**20 // gran * gran
        assert again.occupancy[1] == 0
        assert sorted(v for v in again.mbm_total.values()) == [0, 10000]
        assert sorted(v for v in again.mbm_local.values()) == [0, 100]
        assert backend.host_cache().monitors_total == 2
    finally:
        backend.close()
        for q in qemus:
            q.stop()


# ------------------------------------------ Linux 6.18: mbm_event (AMD ABMC)
def write_status(root: str, path: str, data: bytes) -> tuple[int, str]:
    """One write() of ``data`` to ``path``: its errno (0: success) and
    last_cmd_status after it."""
    (err,) = write_each(f"{root}/{path}", data)
    return err, cat(f"{root}/info/last_cmd_status")


def abmc_sim(sim: Callable[..., Simulator], pid: int | None = None) -> Simulator:
    """The ``amd-abmc`` host on a manual clock, RMIDs free at once (no limbo);
    with ``pid``, that process moves 1000 B/s (600 of them local) in every
    domain."""
    scenario: dict[str, Any] = {"clock": "manual", "limbo_seconds": 0}
    if pid is not None:
        scenario["processes"] = [{"match": {"pid": pid}, "timeline": [
            {"t": 0, "mbm_total": {"*": 1000}, "mbm_local": {"*": 600}}]}]
    return sim("amd-abmc", scenario)


def test_abmc_files_modes_and_errnos(sim: Callable[..., Simulator]) -> None:
    root = abmc_sim(sim).mountpoint
    mon = f"{root}/info/L3_MON"
    assert cat(f"{mon}/mbm_assign_mode") == "[mbm_event]\ndefault\n"
    assert cat(f"{mon}/num_mbm_cntrs") == "0=8;1=8\n"
    assert cat(f"{mon}/available_mbm_cntrs") == "0=6;1=6\n"
    assert cat(f"{mon}/mbm_assign_on_mkdir") == "1\n"
    assert sorted(os.listdir(f"{mon}/event_configs")) == ["mbm_local_bytes", "mbm_total_bytes"]
    assert os.listdir(f"{mon}/event_configs/mbm_local_bytes") == ["event_filter"]
    assert cat(f"{mon}/event_configs/mbm_local_bytes/event_filter") == (
        "local_reads,local_non_temporal_writes,local_reads_slow_memory\n"
    )
    assert not os.path.exists(f"{mon}/mbm_total_bytes_config")  # hidden in mbm_event
    assert cat(f"{root}/mbm_L3_assignments") == (
        "mbm_total_bytes:0=e;1=e\nmbm_local_bytes:0=e;1=e\n"
    )
    os.mkdir(f"{root}/mon_groups/a")
    assert "mbm_L3_assignments" in os.listdir(f"{root}/mon_groups/a")
    a = "mon_groups/a/mbm_L3_assignments"
    assert write_status(root, a, b"mbm_total_bytes:0=_\n") == (0, "ok\n")
    assert cat(f"{root}/{a}") == "mbm_total_bytes:0=_;1=e\nmbm_local_bytes:0=e;1=e\n"
    assert cat(f"{root}/mon_groups/a/mon_data/mon_L3_00/mbm_total_bytes") == "Unassigned\n"
    assert write_status(root, a, b"llc_occupancy:0=e\n") == (
        errno.ENOENT, "Invalid event llc_occupancy\n")
    assert write_status(root, a, b"mbm_total_bytes:5=e\n") == (
        errno.EINVAL, "Invalid domain id 5\n")
    assert write_status(root, a, b"mbm_total_bytes:0=x\n") == (
        errno.EINVAL, "Assign operation 'mbm_total_bytes:0=x' failed\n")
    assert write_each(f"{root}/{a}", b"mbm_total_bytes:0=e") == [errno.EINVAL]  # no newline
    assert write_status(root, "info/L3_MON/mbm_assign_mode", b"dflt\n") == (
        errno.EINVAL, "Unsupported assign mode\n")
    assert write_status(root, "info/L3_MON/mbm_assign_on_mkdir", b"0") == (0, "ok\n")
    assert write_status(root, "info/L3_MON/mbm_assign_mode", b"default\n") == (0, "ok\n")
    assert cat(f"{mon}/mbm_assign_mode") == "[default]\nmbm_event\n"
    for path in ("available_mbm_cntrs", "mbm_assign_on_mkdir"):
        with pytest.raises(OSError) as e:
            cat(f"{mon}/{path}")
        assert e.value.errno == errno.EINVAL
        assert cat(f"{root}/info/last_cmd_status") == (
            "mbm_event counter assignment mode is not enabled\n")
    assert write_status(root, a, b"mbm_total_bytes:0=e\n") == (
        errno.EINVAL, "mbm_event mode is not enabled\n")
    assert cat(f"{mon}/mbm_total_bytes_config") == "0=0x7f;1=0x7f\n"  # BMEC shown again
    assert write_status(root, "info/L3_MON/mbm_assign_mode", b"mbm_event\n") == (0, "ok\n")
    assert cat(f"{mon}/mbm_assign_on_mkdir") == "1\n"
    assert cat(f"{mon}/available_mbm_cntrs") == "0=8;1=8\n"
    assert cat(f"{root}/{a}") == "mbm_total_bytes:0=_;1=_\nmbm_local_bytes:0=_;1=_\n"


def test_abmc_counters_run_out_on_mkdir_and_reset_on_assignment(
    sim: Callable[..., Simulator], procs: Any
) -> None:
    p = procs()
    s = abmc_sim(sim, p.pid)
    root = s.mountpoint
    for name in ("a", "b", "c"):
        os.mkdir(f"{root}/mon_groups/{name}")
        assert cat(f"{root}/info/last_cmd_status") == "ok\n"
    os.mkdir(f"{root}/mon_groups/d")  # succeeds without counters
    assert cat(f"{root}/info/last_cmd_status") == (
        "Failed to allocate counter for mbm_total_bytes in domain 0\n"
        "Failed to allocate counter for mbm_local_bytes in domain 0\n"
    )
    d = f"{root}/mon_groups/d/mon_data/mon_L3_00"
    assert cat(f"{d}/mbm_total_bytes") == "Unassigned\n"
    assert cat(f"{d}/llc_occupancy") == "0\n"
    assert write_status(root, "mon_groups/d/mbm_L3_assignments", b"mbm_total_bytes:*=e\n") == (
        errno.ENOSPC,
        "Failed to allocate counter for mbm_total_bytes in domain 0\n"
        "Assign operation 'mbm_total_bytes:*=e' failed\n",
    )
    os.rmdir(f"{root}/mon_groups/a")  # gives its counters back
    assert cat(f"{root}/info/L3_MON/available_mbm_cntrs") == "0=2;1=2\n"
    write_each(f"{root}/mon_groups/d/tasks", b"%d\n" % p.pid)
    assert write_status(root, "mon_groups/d/mbm_L3_assignments", b"mbm_total_bytes:*=e\n") == (
        0, "ok\n")
    s.advance(10)
    assert cat(f"{d}/mbm_total_bytes") == "10000\n"
    write_each(f"{root}/mon_groups/d/mbm_L3_assignments", b"mbm_total_bytes:0=e\n")
    assert cat(f"{d}/mbm_total_bytes") == "10000\n"  # already assigned: not reset
    write_each(f"{root}/mon_groups/d/mbm_L3_assignments", b"mbm_total_bytes:0=_\n",
               b"mbm_total_bytes:0=e\n")
    assert cat(f"{d}/mbm_total_bytes") == "0\n"  # a new assignment restarts the counter
    s.advance(1)
    assert cat(f"{d}/mbm_total_bytes") == "1000\n"
    # the root group has its counters: it shows its own RMID plus its
    # assigned monitor groups' (d's 1000)
    assert cat(f"{root}/mon_data/mon_L3_00/mbm_total_bytes") == "1000\n"
    write_each(f"{root}/info/L3_MON/event_configs/mbm_total_bytes/event_filter",
               b"local_reads,remote_reads\n")
    assert cat(f"{d}/mbm_total_bytes") == "0\n"  # a filter change resets its counters
    assert write_status(root, "info/L3_MON/event_configs/mbm_total_bytes/event_filter",
                        b"nope\n") == (errno.EINVAL, "Invalid memory transaction type nope\n")


def test_bmec_config_write_resets_and_reads_unavailable(
    sim: Callable[..., Simulator], procs: Any
) -> None:
    s = abmc_sim(sim, procs().pid)
    root = s.mountpoint
    config = f"{root}/info/L3_MON/mbm_local_bytes_config"
    assert not os.path.exists(config)
    write_each(f"{root}/info/L3_MON/mbm_assign_mode", b"default\n")
    assert cat(f"{root}/info/L3_MON/mon_features") == (
        "llc_occupancy\nmbm_total_bytes\nmbm_total_bytes_config\n"
        "mbm_local_bytes\nmbm_local_bytes_config\n"
    )
    assert cat(config) == "0=0x15;1=0x15\n"
    s.advance(2)
    values = f"{root}/mon_data/mon_L3_01"
    assert cat(f"{values}/mbm_total_bytes") == "2000\n"
    assert write_status(root, "info/L3_MON/mbm_local_bytes_config", b"1=0x80\n") == (
        errno.EINVAL, "Invalid event configuration: max valid mask is 0x7f\n")
    assert write_status(root, "info/L3_MON/mbm_local_bytes_config", b"1=0x15\n") == (0, "ok\n")
    assert cat(f"{values}/mbm_total_bytes") == "2000\n"  # the same value: no reset
    assert write_status(root, "info/L3_MON/mbm_local_bytes_config", b"1=0x3\n") == (0, "ok\n")
    assert cat(config) == "0=0x15;1=0x03\n"
    assert cat(f"{values}/mbm_total_bytes") == "Unavailable\n"  # both events reset
    assert cat(f"{values}/mbm_total_bytes") == "0\n"
    assert cat(f"{values}/mbm_local_bytes") == "Unavailable\n"
    assert cat(f"{root}/mon_data/mon_L3_00/mbm_total_bytes") == "2000\n"
    # a scheduled mode switch through the control socket
    s.fault(action="assign_mode", value="mbm_event")
    assert not os.path.exists(config)
    assert cat(f"{root}/info/L3_MON/mbm_assign_mode") == "[mbm_event]\ndefault\n"


# --------------------------------------------- Linux 7.0: Intel AET PERF_PKG
PERF_PKG_EVENTS = ("core_energy", "activity", "stalls_llc_hit", "c1_res",
                   "unhalted_core_cycles", "stalls_llc_miss", "c6_res",
                   "unhalted_ref_cycles", "uops_retired")


def test_perf_pkg_files_values_and_rmid_limit(
    sim: Callable[..., Simulator], procs: Any
) -> None:
    p = procs()
    s = sim("intel-aet", {
        "clock": "manual", "limbo_seconds": 0,
        "processes": [{"match": {"pid": p.pid}, "split": "main", "timeline": [
            {"t": 0, "cpu": {0: 2}, "mbm_total": {0: "1GiB"}}]}],
        "faults": [{"group": "mon_groups/vm", "domain": 1, "event": "activity",
                    "value": "Unavailable"}],
    })
    root = s.mountpoint
    assert sorted(os.listdir(f"{root}/info")) == ["L3", "L3_MON", "PERF_PKG_MON",
                                                  "last_cmd_status"]
    assert cat(f"{root}/info/PERF_PKG_MON/num_rmids") == "576\n"
    assert cat(f"{root}/info/L3_MON/num_rmids") == "1024\n"
    assert cat(f"{root}/info/PERF_PKG_MON/mon_features").split() == list(PERF_PKG_EVENTS)
    assert cat(f"{root}/info/L3_MON/mbm_assign_mode") == "[default]\n"
    assert write_each(f"{root}/info/L3_MON/mbm_assign_mode", b"mbm_event\n") == [errno.EINVAL]
    assert cat(f"{root}/info/last_cmd_status") == "mbm_event mode is not supported\n"
    os.mkdir(f"{root}/mon_groups/vm")
    write_each(f"{root}/mon_groups/vm/tasks", b"%d\n" % p.pid)
    data = f"{root}/mon_groups/vm/mon_data"
    assert sorted(os.listdir(data)) == ["mon_L3_00", "mon_L3_01", "mon_PERF_PKG_00",
                                        "mon_PERF_PKG_01"]
    assert sorted(os.listdir(f"{data}/mon_PERF_PKG_00")) == sorted(PERF_PKG_EVENTS)
    s.advance(10)
    pkg = f"{data}/mon_PERF_PKG_00"
    assert cat(f"{pkg}/core_energy") == "30.000000\n"  # 2 CPUs x 1.5 W x 10 s
    activity = cat(f"{pkg}/activity")
    assert len(activity.split(".")[1]) == 7  # 6 decimals and the newline
    assert cat(f"{data}/mon_PERF_PKG_01/activity") == "Unavailable\n"
    cycles = int(cat(f"{pkg}/unhalted_core_cycles"))
    assert cycles == int(2 * 2.2e9 * 10)
    ipc = int(cat(f"{pkg}/uops_retired")) / cycles
    assert 0.5 < ipc < 2.5
    assert 0 < int(cat(f"{pkg}/stalls_llc_miss")) < cycles
    s.advance(1)
    assert int(cat(f"{pkg}/unhalted_core_cycles")) > cycles
    assert float(cat(f"{root}/mon_data/mon_PERF_PKG_01/c6_res")) > 0  # idle CPUs: root's
    # the group limit is PERF_PKG_MON's 576 (L3_MON has 1024): 575 besides the root
    s.set_rmids(4)  # now L3_MON is the smaller one
    os.mkdir(f"{root}/mon_groups/b")
    os.mkdir(f"{root}/mon_groups/c")
    with pytest.raises(OSError) as e:
        os.mkdir(f"{root}/mon_groups/d")
    assert e.value.errno == errno.ENOSPC
    s.set_rmids(4096)
    assert s.state()["free_rmids"] == 576 - 1 - 3
