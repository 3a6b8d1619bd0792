"""``ceilometer-cmt guard`` as an unprivileged user, its CAT writes through
the privileged daemon.

A throwaway system user runs the real command (not a dry run, ``[cmt]
privsep = always``) against the FUSE resctrl simulator, which, like the
kernel, refuses mkdir, ``schemata`` and ``tasks`` writes to anybody but
root: every write the guard makes goes through ``ceilometer-cmt-privsep-helper``
started with sudo under the shipped sudoers rule (filled in), with the
daemon's own root-owned config. Two stand-in qemus (a noisy guest and its
neighbour, listed by a libvirt test-driver node) and the agent's monitor
groups, made by the test as the agent's backend makes them. The daemon's
rules and their refusals are attacked in tests/functional/security/; here
the guard and the daemon work together:

- a refusal of the daemon (its CLOSID reserve, with libvirt's ``<cachetune>``
  group holding a CLOSID) reaches the guard as a clear reason and nothing
  is written;
- the guard caps the noisy guest (its threads and its monitor group in the
  cap group), releases it when its workload calms, and exits cleanly with
  its daemon;
- ``ceilometer-cmt cleanup --guard`` as the same user undoes a cap through
  the daemon.

Everything is removed, pass or fail: the user, the sudoers file, the mount,
the stand-in qemus, the files. Needs root, FUSE (Debian fuse3), sudo and
useradd/userdel (Debian sudo, passwd).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from ceilometer_cmt.backends.resctrl import fs
from ceilometer_cmt.backends.resctrl.backend import ResctrlBackend
from ceilometer_cmt.backends.resctrl.schemata import read_schemata
from ceilometer_cmt.guard.direct_ops import DirectCatOps
from ceilometer_cmt.simulator import Simulator, mount_fstype
from ceilometer_cmt.simulator.topology import get_topology
from ceilometer_cmt.testing.fakehost import StandInQemu, make_instances, write_node_xml
from tests.support.as_user import (
    VENV_BIN,
    User,
    kill_user_processes,
    popen_as,
    public_workdir,
    run_as,
    throwaway_user,
)
from tests.support.daemon_stand import (
    helper_command,
    missing_reason,
    render_sudoers,
    wait_no_daemons,
    write_daemon_config,
)

_reason = missing_reason()
pytestmark = pytest.mark.skipif(_reason is not None, reason=str(_reason))

CLI = os.path.join(VENV_BIN, "ceilometer-cmt")
PREFIX = "ceilometer-"
CAP = f"{PREFIX}cap-25"
NOISY, NEIGHBOUR = make_instances(2)
#: libvirt's <cachetune> control group of another guest: it holds a CLOSID
CACHETUNE = "qemu-9-instance-x-vcpus_0"
L3 = get_topology("intel-2s").l3[0].size
#: seconds to wait for the guard's next line (its cycles run every second)
WAIT = 60.0


def _domain0(points: list[tuple[int, str]]) -> list[dict[str, Any]]:
    return [{"t": t, "occupancy": {0: occ}} for t, occ in points]


#: the noisy guest: 60% of L3 0, calm (5%) from t=660, hot again from t=1400;
#: its neighbour 10% of both domains. Manual clock: time moves when the test
#: says. 4 CLOSIDs: the daemon's reserve (half) leaves room for one cap
#: group, none when libvirt's <cachetune> group holds one.
LOADS = [
    {"interpolate": "step",
     "timeline": _domain0([(0, "60%"), (660, "5%"), (1400, "60%")])},
    {"timeline": [{"t": 0, "occupancy": {0: "10%", 1: "10%"}}]},
]


@dataclass
class Host:
    work: str
    sim: Simulator
    qemus: list[StandInQemu]
    node: str
    daemon_conf: str
    user: User

    @property
    def root(self) -> str:
        return self.sim.mountpoint

    def config(self, privsep: str = "always") -> str:
        """The guard's ceilometer.conf: not a dry run, every write through
        the daemon (``privsep``); its own CLOSID reserve off, so the daemon's
        is the one that refuses."""
        path = os.path.join(self.work, f"ceilometer-{privsep}.conf")
        with open(path, "w", encoding="utf-8") as f:
            f.write(textwrap.dedent(f"""\
                [DEFAULT]
                host = compute-1
                libvirt_uri = test://{self.node}
                transport_url = fake:/
                [oslo_messaging_notifications]
                driver = noop
                [cmt]
                resctrl_root = {self.root}
                sysfs_root = {self.work}/sys
                libvirt_pid_dir = {self.work}/run
                privsep = {privsep}
                [cmt_privsep]
                helper_command = {helper_command(self.daemon_conf)}
                [cmt_guard]
                dry_run = false
                cap_after = 1
                release_after = 1
                interval = 1
                closid_reserve = 0
                lock_file = {self.user.tmp}/guard.lock
            """))
        os.chmod(path, 0o644)
        return path

    def tasks(self, group: str) -> set[int]:
        return fs.read_tasks(os.path.join(self.root, group) if group else self.root)

    def monitor_tasks(self, ctrl: str, uuid: str) -> set[int]:
        return fs.read_tasks(os.path.join(fs.mon_groups_path(self.root, ctrl), PREFIX + uuid))

    def percent(self, uuid: str) -> float:
        """What the agent-named monitor groups of ``uuid`` hold in L3 0."""
        total = 0
        for ctrl, mons in fs.list_groups(self.root).items():
            if PREFIX + uuid in mons:
                path = os.path.join(fs.mon_groups_path(self.root, ctrl), PREFIX + uuid)
                total += fs.read_group_event(path, "mon_L3_00", "llc_occupancy")
        return 100.0 * total / L3


@pytest.fixture
def host() -> Iterator[Host]:
    with public_workdir("cmt-guard-privsep-") as work:
        qemus: list[StandInQemu] = []
        sim = Simulator(os.path.join(work, "resctrl"), "intel-2s", None)
        backend: ResctrlBackend | None = None
        try:
            get_topology("intel-2s").write_sysfs(os.path.join(work, "sys"))
            pid_dir = os.path.join(work, "run")
            node = write_node_xml(os.path.join(work, "node.xml"), [NOISY, NEIGHBOUR])
            for inst in (NOISY, NEIGHBOUR):
                qemus.append(StandInQemu(inst.domain_name, pid_dir, extra_threads=2).start())
            sim = Simulator(sim.mountpoint, "intel-2s", {
                "clock": "manual", "limbo_seconds": 0, "closids": 4,
                "processes": [{**load, "match": {"pid": q.pid}}
                              for load, q in zip(LOADS, qemus, strict=True)]}).start()
            # the agent's monitor groups, as its backend makes them (as root here)
            backend = ResctrlBackend(sim.mountpoint, sysfs_root=os.path.join(work, "sys"),
                                     pid_dir=pid_dir, prefix=PREFIX)
            assert backend.sync([NOISY.ref, NEIGHBOUR.ref]).unmonitored == {}
            os.mkdir(os.path.join(work, "etc"), 0o755)
            daemon_conf = write_daemon_config(os.path.join(work, "etc", "privsep.conf"),
                                              resctrl_root=sim.mountpoint, pid_dir=pid_dir,
                                              sysfs_root=os.path.join(work, "sys"))
            with throwaway_user(work, "cmtgd", sudoers=lambda u: render_sudoers(
                    u.name, daemon_conf, u.tmp)) as user:
                yield Host(work, sim, qemus, node, daemon_conf, user)
        finally:
            if backend is not None:
                backend.close()
            with contextlib.suppress(Exception):
                sim.stop()
            for q in qemus:
                q.stop()
            mounted = mount_fstype(sim.mountpoint) is not None
            shutil.rmtree(work, ignore_errors=True)
            assert not mounted, "simulator still mounted"


def _guard_once(h: Host, conf: str, daemon: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        run = run_as(h.user, [CLI, "guard", "--config-file", conf, "--once", "--json"], h.work)
        left = wait_no_daemons(h.user.tmp)
    finally:
        kill_user_processes(h.user.name)
    assert run.returncode == 0, run.stderr[-4000:]
    assert not left, f"privsep daemon(s) outlived the guard: {left}"
    assert "Traceback" not in run.stderr, run.stderr[-4000:]
    assert ("Running privsep helper: ['sudo', " in run.stderr) is daemon, run.stderr[-4000:]
    return run


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[str | None]:
    """The guard's stdout, line by line (None at its end), read in a thread."""
    q: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            q.put(line)
        q.put(None)

    threading.Thread(target=read, daemon=True).start()
    return q


def _next_action(q: queue.Queue[str | None], proc: subprocess.Popen[str]) -> dict[str, Any]:
    try:
        line = q.get(timeout=WAIT)
    except queue.Empty:
        raise AssertionError(f"no guard action within {WAIT:.0f} s") from None
    assert line is not None, f"the guard ended (rc {proc.poll()})"
    out: dict[str, Any] = json.loads(line)
    return out


def test_a_daemon_refusal_then_cap_and_release_as_an_unprivileged_user(host: Host) -> None:
    h = host
    conf = h.config()
    noisy = set(h.qemus[0].tids)
    # libvirt's <cachetune> holds a CLOSID: the daemon's reserve refuses the cap group
    os.mkdir(os.path.join(h.root, CACHETUNE))
    run = _guard_once(h, conf)
    assert run.stdout == ""  # no action
    assert (f"guard: cannot cap {NOISY.uuid}: cannot make control group {CAP}: refused by "
            "the ceilometer-cmt privsep daemon, rule closid-reserve") in run.stderr, run.stderr
    assert "kept free for libvirt <cachetune>" in run.stderr
    assert fs.list_ctrl_groups(h.root) == ["", CACHETUNE]
    assert noisy <= h.tasks("") and h.monitor_tasks("", NOISY.uuid) == noisy
    os.rmdir(os.path.join(h.root, CACHETUNE))

    # the CLOSID is free again: the guard, running, caps and then releases
    with popen_as(h.user, [CLI, "guard", "--config-file", conf, "--json"], h.work) as proc:
        q = _lines(proc)
        cap = _next_action(q, proc)
        assert (cap["action"], cap["uuid"], cap["share"], cap["dry_run"]) == (
            "cap", NOISY.uuid, 25, False)
        assert fs.list_ctrl_groups(h.root) == ["", CAP]
        with open(os.path.join(h.root, CAP, "schemata"), encoding="ascii") as f:
            assert "L3:" in f.read()
        assert noisy <= h.tasks(CAP)
        # monitoring followed: the daemon made the agent-named group under the cap
        assert h.monitor_tasks(CAP, NOISY.uuid) == noisy
        assert h.percent(NOISY.uuid) == pytest.approx(25.0, abs=1.0)
        assert set(h.qemus[1].tids) <= h.tasks("")  # the neighbour stays where it was
        # the workload calms: released, back in the default group and its monitor group
        h.sim.advance(700)
        rel = _next_action(q, proc)
        assert (rel["action"], rel["uuid"], rel["share"], rel["dry_run"]) == (
            "release", NOISY.uuid, 25, False)
        assert noisy <= h.tasks("")
        assert h.monitor_tasks("", NOISY.uuid) == noisy
        assert fs.list_ctrl_groups(h.root) == [""]  # the empty cap group went
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=WAIT) == 0
        assert proc.stderr is not None
        err = proc.stderr.read()
    assert not wait_no_daemons(h.user.tmp), "privsep daemon outlived the guard"
    # no refusal, no failed cycle (oslo.privsep relays the daemon's own warnings)
    assert "Traceback" not in err and "WARNING ceilometer_cmt" not in err, err[-4000:]
    assert "Running privsep helper: ['sudo', " in err


def test_cleanup_guard_as_an_unprivileged_user_goes_through_the_daemon(host: Host) -> None:
    h = host
    conf = h.config()
    noisy = set(h.qemus[0].tids)
    # without the daemon, the user's own writes are refused: nothing is made
    run = _guard_once(h, h.config(privsep="never"), daemon=False)
    assert run.stdout == ""
    assert f"cannot make control group {CAP}: Permission denied" in run.stderr, run.stderr
    assert fs.list_ctrl_groups(h.root) == [""]
    run = _guard_once(h, conf)
    assert json.loads(run.stdout)["action"] == "cap"
    assert noisy <= h.tasks(CAP)
    try:
        clean = run_as(h.user, [CLI, "cleanup", "--guard", "--config-file", conf], h.work)
        left = wait_no_daemons(h.user.tmp)
    finally:
        kill_user_processes(h.user.name)
    assert clean.returncode == 0, clean.stderr[-4000:]
    assert not left
    assert f"remove  {h.root}/{CAP}" in clean.stdout
    assert fs.list_ctrl_groups(h.root) == [""]
    assert noisy <= h.tasks("")
    # back into the agent's monitor group of the default group, through the daemon
    assert h.monitor_tasks("", NOISY.uuid) == noisy


def test_an_adopted_cap_group_gets_its_mask_back_through_the_daemon(host: Host) -> None:
    """A cap group with every way and a member (a guard that died between
    its mkdir and its schemata write): the guard, as the unprivileged user,
    has the daemon rewrite the mask, and the instance stays in the group."""
    h = host
    noisy = set(h.qemus[0].tids)
    ops = DirectCatOps(h.root, PREFIX)  # as root here: what the dead guard had done
    ops.make_ctrl_group(CAP)
    assert ops.move_threads(CAP, NOISY.uuid, NOISY.domain_name, sorted(noisy)) == []
    assert read_schemata(h.root, CAP) == {"L3": {0: 0xfffff, 1: 0xfffff}}
    run = _guard_once(h, h.config())
    assert run.stdout == ""  # adopted: no new action
    assert f"cap group {CAP} has 'L3:0=fffff;1=fffff', not the 25% cap's 'L3:0=1f;1=1f': " \
           "rewriting it" in run.stderr, run.stderr[-4000:]
    assert "refused" not in run.stderr, run.stderr[-4000:]
    assert read_schemata(h.root, CAP) == {"L3": {0: 0x1f, 1: 0x1f}}
    assert noisy <= h.tasks(CAP) and h.monitor_tasks(CAP, NOISY.uuid) == noisy
    h.sim.advance(60)
    assert h.percent(NOISY.uuid) == pytest.approx(25.0, abs=1.0)
