"""The guard on the FUSE simulator, with real syscalls and direct writes:
stand-in qemu processes, the agent's resctrl backend making its monitor
groups, the guard reading them and capping with CAT.

Needs /dev/fuse, fusermount3 and libfuse3 (Debian fuse3, libfuse3-3) and root.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from ceilometer_cmt.backends.resctrl import fs
from ceilometer_cmt.backends.resctrl.backend import ResctrlBackend
from ceilometer_cmt.backends.resctrl.schemata import read_schemata
from ceilometer_cmt.cmd import cli
from ceilometer_cmt.guard import policy
from ceilometer_cmt.guard.direct_ops import DirectCatOps
from ceilometer_cmt.guard.observe import GuardInstance
from ceilometer_cmt.guard.service import Guard, GuardBusy, GuardOptions, GuardReport
from ceilometer_cmt.monitor import CacheMonitor
from ceilometer_cmt.simulator import Simulator, fuse_missing_reason, mount_fstype
from ceilometer_cmt.simulator.topology import get_topology
from ceilometer_cmt.testing.fakehost import StandInQemu, make_instances, write_node_xml

_reason = fuse_missing_reason()
if _reason is None and os.geteuid() != 0:
    _reason = "mounting the simulator with allow_other needs root"
pytestmark = pytest.mark.skipif(_reason is not None, reason=f"no FUSE here: {_reason}")

PREFIX = "ceilometer-"
NOISY, NEIGHBOUR, TUNED = make_instances(3)
CAP = f"{PREFIX}cap-25"
#: libvirt's <cachetune> group of instance 3 (doc/kernel-facts-cat.md section 5)
CACHETUNE = f"qemu-3-{TUNED.domain_name}-vcpus_0"
L3 = get_topology("intel-2s").l3[0].size


def load(domain: int, timeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**p, "occupancy": {domain: p["occupancy"]}} for p in timeline]


#: the noisy instance: 60% of L3 0 until t=600, then 5%; its neighbour 10%
#: of both; the cachetune instance 60% of L3 1 (hot beside the neighbour).
#: Matched by pid: other tests on this machine may run stand-ins of the same
#: domain names.
LOADS: list[dict[str, Any]] = [
    {"name": "noisy", "interpolate": "step",
     "timeline": load(0, [{"t": 0, "occupancy": "60%"}, {"t": 660, "occupancy": "5%"}])},
    {"name": "neighbour", "timeline": [{"t": 0, "occupancy": {0: "10%", 1: "10%"}}]},
    {"name": "tuned", "timeline": [{"t": 0, "occupancy": {1: "60%"}}]},
]
SCENARIO: dict[str, Any] = {"clock": "manual", "limbo_seconds": 0}


class Host:
    def __init__(self, tmp: str, scenario: dict[str, Any]) -> None:
        self.tmp = tmp
        self.sysfs = os.path.join(tmp, "sys")
        get_topology("intel-2s").write_sysfs(self.sysfs)
        self.pid_dir = os.path.join(tmp, "run")
        os.makedirs(self.pid_dir)
        self.scenario = scenario
        self.sim = Simulator(os.path.join(tmp, "resctrl"), "intel-2s", None)
        self.qemus: list[StandInQemu] = []
        self.backend: ResctrlBackend | None = None
        self.lock_file = os.path.join(tmp, "guard.lock")
        self.instances = [GuardInstance(i.uuid, i.domain_name) for i in (NOISY, NEIGHBOUR, TUNED)]

    @property
    def root(self) -> str:
        return self.sim.mountpoint

    def start_simulator(self, loads: list[dict[str, Any]] = LOADS) -> None:
        """The stand-in qemus, and the simulator with their loads."""
        for inst in (NOISY, NEIGHBOUR, TUNED):
            self.qemus.append(StandInQemu(inst.domain_name, self.pid_dir, extra_threads=2).start())
        procs = [{**load, "match": {"pid": q.pid}}
                 for load, q in zip(loads, self.qemus, strict=True)]
        self.sim = Simulator(self.sim.mountpoint, "intel-2s",
                             {**self.scenario, "processes": procs})
        self.sim.start()

    def start(self) -> Host:
        self.start_simulator()
        self.backend = ResctrlBackend(self.root, sysfs_root=self.sysfs, pid_dir=self.pid_dir,
                                      prefix=PREFIX)
        return self

    def stop(self) -> None:
        if self.backend is not None:
            self.backend.close()
        for q in self.qemus:
            q.stop()
        self.sim.stop()
        assert mount_fstype(self.sim.mountpoint) is None

    def tune(self) -> None:
        """libvirt's <cachetune> for instance 3: its threads in a control group
        of its own, made before the agent's first cycle."""
        os.mkdir(os.path.join(self.root, CACHETUNE))
        fs.write_tasks(os.path.join(self.root, CACHETUNE, "tasks"), self.qemus[2].tids)

    def agent(self) -> None:
        assert self.backend is not None
        cycle = self.backend.sync([i.ref for i in (NOISY, NEIGHBOUR, TUNED)])
        assert cycle.unmonitored == {}

    def options(self, **kw: Any) -> GuardOptions:
        pol = {"cap_after": 3, "release_after": 3, **kw.pop("policy", {})}
        return GuardOptions(resctrl_root=self.root, sysfs_root=self.sysfs,
                            pid_dir=self.pid_dir, lock_file=self.lock_file,
                            policy=policy.Options(**pol), **{"dry_run": False, **kw})

    def guard(self, ops: DirectCatOps | None = None, **kw: Any) -> Guard:
        return Guard(self.options(**kw), ops or DirectCatOps(self.root, PREFIX),
                     lambda: self.instances).start()

    def step(self, guard: Guard) -> GuardReport:
        """One agent cycle, one guard cycle, then a minute passes."""
        self.agent()
        result = guard.cycle()
        self.sim.advance(60)
        return result

    def ctrl_groups(self) -> list[str]:
        return fs.list_ctrl_groups(self.root)

    def tasks(self, group: str) -> set[int]:
        return fs.read_tasks(os.path.join(self.root, group) if group else self.root)

    def percent(self, uuid: str, domain: int = 0) -> float:
        """What the agent's monitor groups of ``uuid`` hold in ``domain``."""
        total = 0
        for ctrl, mons in fs.list_groups(self.root).items():
            if PREFIX + uuid in mons:
                path = os.path.join(fs.mon_groups_path(self.root, ctrl), PREFIX + uuid)
                total += fs.read_group_event(path, f"mon_L3_{domain:02d}", "llc_occupancy")
        return 100.0 * total / L3

    def config(self, **guard: Any) -> str:
        node = write_node_xml(os.path.join(self.tmp, "node.xml"), [NOISY, NEIGHBOUR, TUNED])
        path = os.path.join(self.tmp, "ceilometer.conf")
        opts = {"dry_run": "false", "cap_after": 1, "interval": 1,
                "lock_file": self.lock_file, **guard}
        with open(path, "w") as f:
            f.write(f"[DEFAULT]\nhost = compute-1\nlibvirt_uri = test://{node}\n"
                    "transport_url = fake:/\n"
                    "[oslo_messaging_notifications]\ndriver = noop\n"
                    f"[cmt]\nresctrl_root = {self.root}\nsysfs_root = {self.sysfs}\n"
                    f"libvirt_pid_dir = {self.pid_dir}\n[cmt_guard]\n"
                    + "".join(f"{k} = {v}\n" for k, v in opts.items()))
        return path


@pytest.fixture
def make_host(tmp_path: Any) -> Iterator[Any]:
    hosts: list[Host] = []

    def make(scenario: dict[str, Any] = SCENARIO) -> Host:
        h = Host(str(tmp_path / f"h{len(hosts)}"), scenario)
        hosts.append(h)
        return h.start()

    yield make
    for h in hosts:
        h.stop()


def test_cap_release_and_the_cachetune_instance_left_alone(make_host: Any) -> None:
    h = make_host()
    h.tune()
    noisy = set(h.qemus[0].tids)
    results = []
    with h.guard() as guard:
        for _ in range(3):
            results.append(h.step(guard))
        # above cap_above from the first cycle: capped on the third (cap_after)
        assert [r.actions for r in results[:2]] == [(), ()]
        cap = results[2].actions
        assert [(a.kind, a.uuid, a.share, a.domains) for a in cap] == [
            ("cap", NOISY.uuid, 25, (0,))]
        assert "holds 60% of L3 domain 0" in cap[0].reason
        assert h.ctrl_groups() == ["", CAP, CACHETUNE]
        assert noisy <= h.tasks(CAP)
        # monitoring followed the threads into the agent-named group under the cap
        mon = os.path.join(h.root, CAP, "mon_groups", PREFIX + NOISY.uuid)
        assert fs.read_tasks(mon) == noisy
        assert results[2].capped == 1
        assert results[2].allocation == {NOISY.uuid: 25.0, NEIGHBOUR.uuid: 100.0,
                                         TUNED.uuid: 100.0}
        # the occupancy falls to about the cap share (25% of the ways)
        assert h.percent(NOISY.uuid) == pytest.approx(25.0, abs=1.0)
        assert h.percent(NEIGHBOUR.uuid) == pytest.approx(10.0, abs=1.0)
        # capped, it stays capped while its workload is high (no flapping)
        while h.sim.state()["time"] < 660:
            results.append(h.step(guard))
        assert all(r.actions == () for r in results[3:])
        # its workload calms at t=660: released after release_after calm cycles
        for _ in range(6):
            results.append(h.step(guard))
        released = [(n, a) for n, r in enumerate(results) for a in r.actions
                     if a.kind == "release"]
        assert len(released) == 1
        n, rel = released[0]
        assert (rel.uuid, rel.share) == (NOISY.uuid, 25)
        assert "below 15% of every L3 domain for 3 cycles" in rel.reason
        assert results[n].capped == 0 and results[n].allocation[NOISY.uuid] == 100.0
        assert h.ctrl_groups() == ["", CACHETUNE]  # the cap group went with the last member
        assert noisy <= h.tasks("")
        assert fs.read_tasks(os.path.join(h.root, "mon_groups", PREFIX + NOISY.uuid)) == noisy
    # the cachetune instance was hot beside a neighbour all along: never touched
    assert not [a for r in results for a in r.actions if a.uuid == TUNED.uuid]
    assert h.tasks(CACHETUNE) == set(h.qemus[2].tids)


def test_kill_9_then_restart_adopts_and_a_second_guard_refuses(make_host: Any) -> None:
    h = make_host()
    h.tune()
    h.agent()  # the agent's monitor groups exist: the guard has data
    conf = h.config()
    proc = subprocess.Popen([sys.executable, "-m", "ceilometer_cmt.cmd.cli", "guard",
                             "--config-file", conf, "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert json.loads(line) == {"event": "guard", "action": "cap", "uuid": NOISY.uuid,
                                    "share": 25, "dry_run": False,
                                    "reason": json.loads(line)["reason"]}
        # the first guard holds the lock: a second one refuses to start
        with pytest.raises(GuardBusy, match="another ceilometer-cmt guard"):
            h.guard()
        second = subprocess.run([sys.executable, "-m", "ceilometer_cmt.cmd.cli", "guard",
                                 "--config-file", conf, "--once"],
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 2
        assert "not starting a second one" in second.stderr
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
    assert CAP in h.ctrl_groups()
    # restarted: takes the lock, adopts its group and member, acts no more
    with h.guard(policy={"cap_after": 1, "release_after": 3}) as guard:
        r = h.step(guard)
        assert r.actions == () and r.refusals == () and r.errors == ()
        assert r.capped == 1 and r.allocation[NOISY.uuid] == 25.0
        assert h.ctrl_groups() == ["", CAP, CACHETUNE]
        assert set(h.qemus[0].tids) <= h.tasks(CAP)


class RacingOps(DirectCatOps):
    """pqos taking the last CLOSID (it takes no flock) just before our mkdir."""

    def make_ctrl_group(self, ctrl: str) -> None:
        os.mkdir(os.path.join(self.root, "COS1"))
        super().make_ctrl_group(ctrl)


def test_out_of_closids_gives_the_reason_and_leaves_nothing(make_host: Any) -> None:
    h = make_host({**SCENARIO, "closids": 2})
    with h.guard(RacingOps(h.root, PREFIX), policy={"cap_after": 1, "closid_reserve": 0}) as g:
        r = h.step(g)
    assert r.actions == ()
    # both hot instances wait for the group that could not be made
    assert {(x.uuid, x.reason) for x in r.refusals} == {
        (u, f"cannot make control group {CAP}: Out of CLOSIDs") for u in (NOISY.uuid, TUNED.uuid)}
    assert h.ctrl_groups() == ["", "COS1"]
    assert set(h.qemus[0].tids) | set(h.qemus[2].tids) <= h.tasks("")
    os.rmdir(os.path.join(h.root, "COS1"))
    # the reserve kept for libvirt: refused before any write
    with h.guard(policy={"cap_after": 1}) as g:
        r = h.step(g)
    assert r.actions == () and "closid_reserve" in r.refusals[0].reason
    assert h.ctrl_groups() == [""]


def test_dry_run_writes_nothing_but_says_what_it_would_do(make_host: Any) -> None:
    h = make_host()
    ops = DirectCatOps(h.root, PREFIX)
    with h.guard(ops, dry_run=True) as guard:
        results = [h.step(guard) for _ in range(3)]
    assert [(a.kind, a.uuid, a.done) for a in results[2].actions] == [
        ("cap", NOISY.uuid, False), ("cap", TUNED.uuid, False)]
    assert ops.calls == 0
    assert h.ctrl_groups() == [""]
    assert results[2].capped == 0 and results[2].allocation[NOISY.uuid] == 100.0


def test_cleanup_guard_removes_our_groups_and_nothing_else(make_host: Any) -> None:
    h = make_host()
    h.tune()
    with h.guard(policy={"cap_after": 1}) as guard:
        assert h.step(guard).capped == 1
    os.mkdir(os.path.join(h.root, "ceilometer-other"))  # our prefix, not a cap group
    assert cli.main(["cleanup", "--guard", "--dry-run", "--config-file", h.config()]) == 0
    assert CAP in h.ctrl_groups()
    assert cli.main(["cleanup", "--guard", "--config-file", h.config()]) == 0
    assert h.ctrl_groups() == ["", "ceilometer-other", CACHETUNE]
    noisy = set(h.qemus[0].tids)
    assert noisy <= h.tasks("")
    assert fs.read_tasks(os.path.join(h.root, "mon_groups", PREFIX + NOISY.uuid)) == noisy
    assert h.tasks(CACHETUNE) == set(h.qemus[2].tids)



def test_the_agent_follows_a_cap_and_a_release_at_once(make_host: Any,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """The agent's next cycle after a cap reads the capped instance in its
    new group (no 0, no wait for a re-listing) and reports its allocation;
    after a release it lets the cap group's monitor group go without calling
    it removed by others, and the bandwidth meters stay monotonic."""
    h = make_host()
    h.tune()
    refs = [i.ref for i in (NOISY, NEIGHBOUR, TUNED)]
    assert h.backend is not None
    monitor = CacheMonitor(h.backend)
    first = monitor.poll(refs)
    assert first.capped == 0
    assert {u: m.allocation_percent for u, m in first.instances.items()} == {
        NOISY.uuid: 100.0, NEIGHBOUR.uuid: 100.0, TUNED.uuid: 100.0}
    totals = [first.instances[NOISY.uuid].mbm_total_bytes]
    with h.guard(policy={"cap_after": 1, "release_after": 1}) as guard:
        assert guard.cycle().capped == 1
        h.sim.advance(60)
        capped = monitor.poll(refs)
        noisy = capped.instances[NOISY.uuid]
        assert noisy.occupancy_domains is not None
        assert 100.0 * noisy.occupancy_domains[0] / L3 == pytest.approx(25.0, abs=1.0)
        assert capped.capped == 1
        assert {u: m.allocation_percent for u, m in capped.instances.items()} == {
            NOISY.uuid: 25.0, NEIGHBOUR.uuid: 100.0, TUNED.uuid: 100.0}
        assert noisy.allocation_domains == {0: 25.0, 1: 25.0}
        assert noisy.mbm_total_rate is None  # the move: the rate skips once
        totals.append(noisy.mbm_total_bytes)
        while h.sim.state()["time"] < 660:
            h.sim.advance(60)
            totals.append(monitor.poll(refs).instances[NOISY.uuid].mbm_total_bytes)
        assert [a.kind for a in guard.cycle().actions] == ["release"]
        caplog.clear()
        h.sim.advance(60)
        released = monitor.poll(refs)
        assert released.removed_by_others == 0 and released.capped == 0
        assert released.instances[NOISY.uuid].allocation_percent == 100.0
        assert released.instances[NOISY.uuid].occupancy is not None
        totals.append(released.instances[NOISY.uuid].mbm_total_bytes)
        assert not [r for r in caplog.records if r.levelname == "WARNING"]
        h.sim.advance(60)
        after = monitor.poll(refs).instances[NOISY.uuid]
        assert after.mbm_total_rate is not None
        totals.append(after.mbm_total_bytes)
    assert None not in totals and totals == sorted(totals), totals


def test_an_agent_restarted_while_capped_adopts_the_cap_groups_member(make_host: Any) -> None:
    """The agent dies (its state gone, as after kill -9) while the noisy
    instance is capped: the new agent adopts our monitor group under the cap
    group, sweeps nothing of the guard's, and reads the capped share at once."""
    h = make_host()
    h.tune()
    with h.guard(policy={"cap_after": 1, "release_after": 100}) as guard:
        h.agent()
        assert guard.cycle().capped == 1
        h.sim.advance(60)
        h.agent()
        assert h.backend is not None
        h.backend.close()  # the agent's memory is gone; its groups stay
        h.backend = ResctrlBackend(h.root, sysfs_root=h.sysfs, pid_dir=h.pid_dir, prefix=PREFIX)
        monitor = CacheMonitor(h.backend)
        refs = [i.ref for i in (NOISY, NEIGHBOUR, TUNED)]
        h.sim.advance(60)
        result = monitor.poll(refs)
        assert h.backend.rmdirs == 0 and h.backend.mkdirs == 0
        assert result.capped == 1 and result.removed_by_others == 0
        noisy = result.instances[NOISY.uuid]
        assert noisy.allocation_percent == 25.0
        assert noisy.occupancy_domains is not None
        assert 100.0 * noisy.occupancy_domains[0] / L3 == pytest.approx(25.0, abs=1.0)
        cap = policy.Options().group_name(25)
        assert NOISY.uuid in {n.removeprefix(PREFIX) for n in fs.list_groups(h.root)[cap]}
        assert guard.cycle().actions == ()  # the guard sees nothing to change


def test_an_adopted_cap_group_with_every_way_gets_the_cap_mask(make_host: Any) -> None:
    """A guard died between its mkdir and its schemata write (or another tool
    rewrote the mask): the cap group has every way and a member. The next
    guard rewrites the mask; the instance stays capped, at 25% for real."""
    h = make_host()
    h.tune()  # the hot third instance stays in libvirt's group
    h.agent()
    ops = DirectCatOps(h.root, PREFIX)
    ops.make_ctrl_group(CAP)  # a new group: every way (the kernel's default)
    assert read_schemata(h.root, CAP) == {"L3": {0: 0xfffff, 1: 0xfffff}}
    assert ops.move_threads(CAP, NOISY.uuid, NOISY.domain_name, h.qemus[0].tids) == []
    with h.guard(policy={"cap_after": 1, "release_after": 3}) as guard:
        r = h.step(guard)
        assert r.actions == () and r.refusals == () and r.errors == ()
        assert read_schemata(h.root, CAP) == {"L3": {0: 0x1f, 1: 0x1f}}
        assert r.capped == 1 and r.allocation[NOISY.uuid] == 25.0
        assert h.ctrl_groups() == ["", CAP, CACHETUNE]
        assert set(h.qemus[0].tids) <= h.tasks(CAP)
        h.step(guard)
        assert h.percent(NOISY.uuid) == pytest.approx(25.0, abs=1.0)
