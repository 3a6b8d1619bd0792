"""The daemon's resctrl side in process, as root, on the FUSE simulator.

What the privsep daemon runs for each request (``ResctrlRoot``), without the
privsep channel: names beneath its own root fd, the mount check, the RMID
reserve, the qemu rule for thread ids. tests/functional/security/ makes the same
requests as an unprivileged user through sudo and the real daemon.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ceilometer_cmt.errors import InstanceGone
from ceilometer_cmt.privsep.resctrl_root import ResctrlRoot
from ceilometer_cmt.privsep.rules import QemuRule
from ceilometer_cmt.simulator import Simulator, fuse_missing_reason
from ceilometer_cmt.testing.fakehost import StandInQemu

_reason = fuse_missing_reason()
if _reason is None and os.geteuid() != 0:
    _reason = "mounting the simulator and chowning pidfiles need root"
pytestmark = pytest.mark.skipif(_reason is not None, reason=f"{_reason}")

PREFIX = "ceilometer-"
UUID = "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab"
UUID2 = "0b8f3c1e-2d4a-4b6c-9e7f-fedcba987654"
#: the stand-in qemus run this interpreter: the tests' own emulator entry
EMULATOR = os.path.realpath(sys.executable)


@dataclass
class Host:
    sim: Simulator
    pid_dir: str
    qemu: StandInQemu
    rule: QemuRule

    def root(self, **kw: object) -> ResctrlRoot:
        kw.setdefault("allow_simulator", True)
        return ResctrlRoot(self.sim.mountpoint, PREFIX, self.rule, **kw)  # type: ignore[arg-type]

    def group(self, name: str = PREFIX + UUID, ctrl: str = "") -> Path:
        base = Path(self.sim.mountpoint) / ctrl if ctrl else Path(self.sim.mountpoint)
        return base / "mon_groups" / name

    def tasks(self, name: str = PREFIX + UUID) -> set[int]:
        return {int(t) for t in (self.group(name) / "tasks").read_text().split()}


@contextlib.contextmanager
def simulated_host(tmp_path: Path, topology: str, extra_threads: int) -> Iterator[Host]:
    """The simulator with ``topology`` and one stand-in qemu, stopped on exit."""
    pid_dir = str(tmp_path / "run")
    os.mkdir(pid_dir)
    sim = Simulator(str(tmp_path / "resctrl"), topology).start()
    qemu = StandInQemu("instance-00000001", pid_dir, extra_threads=extra_threads)
    try:
        qemu.start()
        yield Host(sim, pid_dir, qemu, QemuRule(pid_dir, emulators=(EMULATOR,)))
    finally:
        qemu.stop()
        sim.stop()


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    with simulated_host(tmp_path, "intel-2s", extra_threads=2) as h:
        yield h


def test_monitor_group_made_filled_and_removed_by_name(host: Host) -> None:
    root = host.root()
    root.mkdir("", UUID)
    assert host.group().is_dir()
    tids = list(host.qemu.tids)
    assert root.write_tasks("", UUID, host.qemu.domain_name, tids) == []
    assert host.tasks() == set(tids)
    root.rmdir("", PREFIX + UUID)
    assert not host.group().exists()
    root.close()


@pytest.mark.parametrize("use_openat2", [True, False], ids=["openat2", "walk"])
def test_in_a_control_group_with_either_resolver(host: Host, use_openat2: bool) -> None:
    os.mkdir(Path(host.sim.mountpoint) / "qemu-1-vcpus")  # libvirt's <cachetune> group
    root = host.root(use_openat2=use_openat2)
    root.mkdir("qemu-1-vcpus", UUID)
    assert host.group(ctrl="qemu-1-vcpus").is_dir()
    root.rmdir("qemu-1-vcpus", PREFIX + UUID)
    with pytest.raises(FileNotFoundError):
        root.mkdir("no-such-group", UUID)


BAD_NAMES = ["..", ".", "mon_groups", "info", "a/b", "/sys/fs/resctrl", "x\n", "x\x00",
             "\n", "a" * 256, "../../etc", "/proc/1/root/sys/fs/resctrl", 7, None]


@pytest.mark.parametrize("ctrl", BAD_NAMES)
def test_control_group_names_are_checked(host: Host, ctrl: object) -> None:
    with pytest.raises(PermissionError, match="rule names"):
        host.root().mkdir(ctrl, UUID)


@pytest.mark.parametrize("uuid", [UUID + "\n", UUID.upper(), "../" + UUID, "", "x", 5,
                                  UUID + "/../../x", UUID[:-1] + "\x00"])
def test_uuids_are_checked(host: Host, uuid: object) -> None:
    with pytest.raises(PermissionError, match="rule names"):
        host.root().mkdir("", uuid)
    assert os.listdir(Path(host.sim.mountpoint) / "mon_groups") == []


def test_rmdir_takes_only_our_prefix(host: Host) -> None:
    os.mkdir(host.group("pqos-1"))
    root = host.root()
    for name in ("pqos-1", "", "../pqos-1", PREFIX + "x/../../pqos-1", PREFIX + "\n"):
        with pytest.raises(PermissionError, match="rule (prefix|names)"):
            root.rmdir("", name)
    assert host.group("pqos-1").is_dir()


def test_the_simulator_only_when_the_daemons_config_allows_it(host: Host,
                                                             tmp_path: Path) -> None:
    with pytest.raises(PermissionError, match="rule mount.*allow_simulator"):
        host.root(allow_simulator=False).mkdir("", UUID)
    plain = tmp_path / "plain"
    (plain / "mon_groups").mkdir(parents=True)
    with pytest.raises(PermissionError, match="rule mount.*not a resctrl mount"):
        ResctrlRoot(str(plain), PREFIX, host.rule, allow_simulator=True).mkdir("", UUID)
    assert os.listdir(plain / "mon_groups") == []


def test_a_new_mount_at_the_root_is_checked_again(host: Host, tmp_path: Path) -> None:
    root = host.root()
    root.mkdir("", UUID)
    host.sim.stop()
    os.makedirs(Path(host.sim.mountpoint) / "mon_groups", exist_ok=True)
    # now a plain directory stands there: refused, nothing made in it
    with pytest.raises(PermissionError, match="rule mount"):
        root.mkdir("", UUID2)
    assert os.listdir(Path(host.sim.mountpoint) / "mon_groups") == []
    shutil.rmtree(Path(host.sim.mountpoint) / "mon_groups")
    host.sim.start()
    root.mkdir("", UUID2)  # the new simulator mount, checked again
    assert host.group(PREFIX + UUID2).is_dir()
    root.close()


def test_the_rmid_reserve_is_never_handed_out(host: Host) -> None:
    host.sim.set_rmids(6)
    root = host.root(rmid_reserve=2)
    made = []
    for i in range(10):
        uuid = f"{i:08x}-0000-4000-8000-000000000000"
        try:
            root.mkdir("", uuid)
            made.append(uuid)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e  # as the kernel's own "no free RMID"
            assert "rule rmid-reserve" in str(e) and "2 are kept in reserve" in str(e)
            assert "[cmt_privsep] rmid_reserve" in str(e)
            break
    assert len(made) == 3  # default group + 3 = 4 = 6 - 2
    # root itself (libvirt) can still make a control group with the reserve
    os.mkdir(Path(host.sim.mountpoint) / "qemu-2-vcpus")
    assert root.rmids_in_use() == 5
    # the default reserve is info/L3/num_closids
    assert host.root().reserve() == int(
        (Path(host.sim.mountpoint) / "info" / "L3" / "num_closids").read_text())


@pytest.mark.parametrize("tids", [[1], [-1], [0], [2**31], [2**64], ["12"], [True], [1.5],
                                  "12", None, list(range(1, 5000))])
def test_thread_ids_must_be_threads_of_the_qemu(host: Host, tids: object) -> None:
    root = host.root()
    root.mkdir("", UUID)
    with pytest.raises(PermissionError, match="rule threads"):
        root.write_tasks("", UUID, host.qemu.domain_name, tids)
    assert host.tasks() == set()


def test_threads_of_other_processes_are_refused(host: Host) -> None:
    root = host.root()
    root.mkdir("", UUID)
    other = subprocess.Popen(["sleep", "60"])
    try:
        for tids in ([other.pid], [host.qemu.pid, other.pid], [os.getpid()]):
            with pytest.raises(PermissionError, match="rule threads"):
                root.write_tasks("", UUID, host.qemu.domain_name, tids)
    finally:
        other.kill()
        other.wait()
    assert host.tasks() == set()
    # a thread that exited is a failure of its own, the others are written
    gone = other.pid
    failures = root.write_tasks("", UUID, host.qemu.domain_name, [host.qemu.pid, gone])
    assert failures == [(gone, errno.ESRCH)] and host.tasks() == {host.qemu.pid}


def test_the_pidfile_and_the_process_must_be_a_qemus(host: Host, tmp_path: Path) -> None:
    root = host.root()
    root.mkdir("", UUID)
    tids = list(host.qemu.tids)
    name = host.qemu.domain_name
    # an emulator the daemon's config does not name
    strict = host.root()
    strict.rule = QemuRule(host.pid_dir)
    with pytest.raises(PermissionError, match="rule qemu.*not a configured emulator"):
        strict.write_tasks("", UUID, name, tids)
    # a user the config does not name
    strict.rule = QemuRule(host.pid_dir, emulators=(EMULATOR,), users=("nobody",))
    with pytest.raises(PermissionError, match="rule qemu.*not as a qemu user"):
        strict.write_tasks("", UUID, name, tids)
    # another guest's name on the command line
    with pytest.raises((PermissionError, InstanceGone)):
        root.write_tasks("", UUID, "instance-00000002", tids)
    pidfile = Path(host.qemu.pidfile)
    os.chown(pidfile, 65534, 65534)
    with pytest.raises(PermissionError, match="rule qemu.*pidfile"):
        root.write_tasks("", UUID, name, tids)
    os.chown(pidfile, 0, 0)
    os.chmod(pidfile, 0o666)
    with pytest.raises(PermissionError, match="rule qemu.*pidfile"):
        root.write_tasks("", UUID, name, tids)
    os.chmod(pidfile, 0o644)
    real = pidfile.read_text()
    pidfile.unlink()
    (tmp_path / "elsewhere.pid").write_text(real)
    pidfile.symlink_to(tmp_path / "elsewhere.pid")
    with pytest.raises(PermissionError, match="rule qemu"):
        root.write_tasks("", UUID, name, tids)
    pidfile.unlink()
    pidfile.write_text("1\n")  # pid 1: root-owned, but not this guest's qemu
    with pytest.raises(PermissionError, match="rule qemu"):
        root.write_tasks("", UUID, name, [1])
    for odd in ("../run/" + name, name + "\n", "", "a/b"):
        with pytest.raises(PermissionError, match="rule names"):
            root.write_tasks("", UUID, odd, tids)
    assert host.tasks() == set()


def test_threads_in_another_tools_monitor_group_stay_there(host: Host) -> None:
    root = host.root()
    root.mkdir("", UUID)
    foreign = host.group("pqos-7")
    os.mkdir(foreign)
    tid = host.qemu.tids[1]
    (foreign / "tasks").write_text(f"{tid}\n")
    with pytest.raises(PermissionError, match="rule foreign-group"):
        root.write_tasks("", UUID, host.qemu.domain_name, [tid])
    assert {int(t) for t in (foreign / "tasks").read_text().split()} == {tid}
    assert host.tasks() == set()


# ------------------------------------------------------------ MBM counter assignment
@pytest.fixture
def abmc_host(tmp_path: Path) -> Iterator[Host]:
    """A Linux 6.18 AMD ABMC host: mbm_event mode, 8 counters per domain
    (the default group holds 2 of them from boot)."""
    with simulated_host(tmp_path, "amd-abmc", extra_threads=1) as h:
        yield h


def _assignments(host: Host, name: str = PREFIX + UUID) -> str:
    return (host.group(name) / "mbm_L3_assignments").read_text()


def test_assignments_written_by_name(abmc_host: Host) -> None:
    from ceilometer_cmt.backends.resctrl import assign_files as af
    from ceilometer_cmt.backends.resctrl import fs

    host, root = abmc_host, abmc_host.root()
    root.mkdir("", UUID)  # mbm_assign_on_mkdir: total and local everywhere
    assert af.read_assignments(str(host.group())) == {
        ev: {0: True, 1: True} for ev in fs.MBM_EVENTS}
    assert root.write_assignments("", UUID, [af.format_assignment("mbm_local_bytes", False)]) \
        == []
    assert _assignments(host) == "mbm_total_bytes:0=e;1=e\nmbm_local_bytes:0=_;1=_\n"
    assert root.write_assignments("", UUID, ["mbm_local_bytes:1=e"]) == []
    assert _assignments(host) == "mbm_total_bytes:0=e;1=e\nmbm_local_bytes:0=_;1=e\n"
    assert af.read_available_mbm_cntrs(host.sim.mountpoint) == {0: 5, 1: 4}
    root.rmdir("", PREFIX + UUID)


def test_assignments_when_counters_run_out(abmc_host: Host) -> None:
    from ceilometer_cmt.backends.resctrl import assign_files, fs

    host, root = abmc_host, abmc_host.root(counter_reserve=0)  # the kernel's own limit
    uuids = [f"{i:08x}-4a5b-4c6d-8e7f-0123456789ab" for i in range(4)]
    for u in uuids:  # 3 x 2 counters fit the 6 left; mkdir never fails for the 4th
        root.mkdir("", u)
    last = PREFIX + uuids[-1]
    assert _assignments(host, last) == "mbm_total_bytes:0=_;1=_\nmbm_local_bytes:0=_;1=_\n"
    lines = ["mbm_total_bytes:*=e\n", "mbm_local_bytes:0=e\n"]
    assert root.write_assignments("", uuids[-1], lines) == [
        (lines[0], errno.ENOSPC), (lines[1], errno.ENOSPC)]
    assert "Failed to allocate counter for mbm_local_bytes in domain 0" in \
        fs.last_cmd_status(host.sim.mountpoint)
    # a release in one group, then the other gets it: one write per line
    assert root.write_assignments("", uuids[0], ["mbm_total_bytes:*=_\n"]) == []
    assert root.write_assignments("", uuids[-1], lines) == [(lines[1], errno.ENOSPC)]
    assert _assignments(host, last) == "mbm_total_bytes:0=e;1=e\nmbm_local_bytes:0=_;1=_\n"
    for u in uuids:
        root.rmdir("", PREFIX + u)
    assert assign_files.read_available_mbm_cntrs(host.sim.mountpoint) == {0: 6, 1: 6}


def test_the_counter_reserve_is_never_taken(abmc_host: Host) -> None:
    """8 counters per domain, so 2 kept (an eighth, at least 2); the default
    group holds 2 from boot: 4 free for us, then only releases and what a
    group already holds."""
    from ceilometer_cmt.backends.resctrl import assign_files

    host, root = abmc_host, abmc_host.root()
    mnt = host.sim.mountpoint
    a, b, c = (f"{i:08x}-4a5b-4c6d-8e7f-0123456789ab" for i in range(3))
    root.mkdir("", a)
    root.mkdir("", b)  # takes the last 2 above the reserve
    assert assign_files.read_available_mbm_cntrs(mnt) == {0: 2, 1: 2}
    root.mkdir("", c)  # the kernel gave it 2 of the reserve: given back at once
    assert assign_files.read_available_mbm_cntrs(mnt) == {0: 2, 1: 2}
    none = "mbm_total_bytes:0=_;1=_\nmbm_local_bytes:0=_;1=_\n"
    assert _assignments(host, PREFIX + c) == none
    for lines in (["mbm_total_bytes:*=e\n"], ["mbm_local_bytes:1=e\n"],
                  ["mbm_total_bytes:0=_\n", "mbm_total_bytes:0=e\n"]):
        with pytest.raises(OSError, match=r"rule mbm-counter-reserve: .*\(\[cmt_privsep\] "
                                          r"mbm_counter_reserve\) in domain [01] \(2 free, 2 kept\)"
                           ) as e:
            root.write_assignments("", c, lines)
        assert e.value.errno == errno.ENOSPC
    assert _assignments(host, PREFIX + c) == none
    assert assign_files.read_available_mbm_cntrs(mnt) == {0: 2, 1: 2}
    # what a group holds costs nothing, releases always pass and free counters
    assert root.write_assignments("", a, ["mbm_total_bytes:*=e\n",
                                          "mbm_local_bytes:0=e;1=e\n"]) == []
    assert root.write_assignments("", a, ["mbm_local_bytes:*=_\n"]) == []
    assert root.write_assignments("", c, ["mbm_total_bytes:*=e\n"]) == []
    assert _assignments(host, PREFIX + c) == "mbm_total_bytes:0=e;1=e\nmbm_local_bytes:0=_;1=_\n"
    assert assign_files.read_available_mbm_cntrs(mnt) == {0: 2, 1: 2}
    for u in (a, b, c):
        root.rmdir("", PREFIX + u)
    assert assign_files.read_available_mbm_cntrs(mnt) == {0: 6, 1: 6}


def test_the_counter_reserve_from_the_option(abmc_host: Host) -> None:
    from ceilometer_cmt.backends.resctrl import assign_files

    host, root = abmc_host, abmc_host.root(counter_reserve=5)
    root.mkdir("", UUID)  # 6 free: only total stays, local goes back
    assert _assignments(host) == "mbm_total_bytes:0=e;1=e\nmbm_local_bytes:0=_;1=_\n"
    assert assign_files.read_available_mbm_cntrs(host.sim.mountpoint) == {0: 5, 1: 5}
    with pytest.raises(OSError, match=r"rule mbm-counter-reserve: .* domain 0 \(5 free, 5 kept\)"):
        root.write_assignments("", UUID, ["mbm_local_bytes:0=e\n"])
    root.rmdir("", PREFIX + UUID)


def test_the_counter_reserve_outside_mbm_event_mode(abmc_host: Host) -> None:
    """In default mode the kernel refuses assignments itself; the daemon does
    not even try, and mkdir gives nothing back."""
    host, root = abmc_host, abmc_host.root()
    mode = Path(host.sim.mountpoint) / "info" / "L3_MON" / "mbm_assign_mode"
    mode.write_text("default\n")
    try:
        root.mkdir("", UUID)
        with pytest.raises(OSError, match="rule mbm-counter-reserve: .*cannot be read") as e:
            root.write_assignments("", UUID, ["mbm_total_bytes:0=e\n"])
        assert e.value.errno == errno.EINVAL
        root.rmdir("", PREFIX + UUID)
    finally:
        mode.write_text("mbm_event\n")


def test_assignments_refused_by_name_and_line(abmc_host: Host) -> None:
    host, root = abmc_host, abmc_host.root()
    root.mkdir("", UUID)
    os.mkdir(host.group("pqos-1"))
    before = _assignments(host), _assignments(host, "pqos-1")
    for ctrl, uuid, lines, rule in (
            (host.sim.mountpoint, UUID, ["mbm_total_bytes:0=_"], "names"),
            ("", "pqos-1", ["mbm_total_bytes:0=_"], "names"),
            ("", f"../pqos-1/{UUID}", ["mbm_total_bytes:0=_"], "names"),
            ("", UUID, ["mbm_total_bytes:0=_\n../../tasks"], "assignments"),
            ("", UUID, ["llc_occupancy:0=_"], "assignments"),
            ("", UUID, ["mbm_total_bytes:0=_\nmbm_local_bytes:0=_"], "assignments"),
            ("", UUID, ["mbm_total_bytes:" + "0=_;" * 1000 + "0=_"], "assignments")):
        with pytest.raises(OSError, match=f"rule {rule}: ") as e:
            root.write_assignments(ctrl, uuid, lines)
        assert e.value.errno in ((None, errno.EPERM) if rule == "names" else (errno.EINVAL,))
    assert (_assignments(host), _assignments(host, "pqos-1")) == before
    with pytest.raises(FileNotFoundError):  # not made: nothing to assign to
        root.write_assignments("", UUID2, ["mbm_total_bytes:0=e"])
    root.rmdir("", PREFIX + UUID)
    os.rmdir(host.group("pqos-1"))
