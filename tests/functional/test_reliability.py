"""Reliability suite: the resctrl backend under what production hosts do to it.

Everything runs against the FUSE resctrl simulator with real syscalls (mkdir,
rmdir, ``tasks`` writes, value reads) from the plugin's own backend, with the
mount check on, and real stand-in qemu processes. Each test prints its figures
(``pytest -s`` shows them) and cleans up every mount and process it made.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from ceilometer_cmt.backends.resctrl import fs
from ceilometer_cmt.backends.resctrl.backend import ResctrlBackend
from ceilometer_cmt.monitor import CacheMonitor
from ceilometer_cmt.readings import InstanceRef
from ceilometer_cmt.simulator import Simulator, mount_fstype
from ceilometer_cmt.simulator.topology import get_topology
from ceilometer_cmt.testing.fakehost import StandInQemu
from ceilometer_cmt.testing.kernel_trees import file_calls
from ceilometer_cmt.testing.wait import wait_until
from tests.support import paths
from tests.support.fuse import needs_fuse_root
from tests.support.jsonl import whole_lines

pytestmark = needs_fuse_root

PREFIX = "ceilometer-"
AGENT = str(paths.TESTS / "support" / "reliability_agent.py")

#: Churn size: instance starts (each one also stopped) over the whole run.
CHURN_STARTS = int(os.environ.get("CMT_CHURN_STARTS", "10000"))
CHURN_POOL = 40  # real stand-in processes
CHURN_SWAP = 20  # instances replaced per cycle: 20 starts + 20 stops


def new_uuid() -> str:
    return str(uuidlib.uuid4())


def load(name: str) -> dict[str, Any]:
    """Every qemu of domain ``name``: 1 MiB per domain, 1000 B/s total, 100 B/s local."""
    return {"match": {"cmdline": f"guest={name},"}, "timeline": [
        {"t": 0, "occupancy": {"*": "1MiB"}, "mbm_total": {"*": 1000}, "mbm_local": {"*": 100}},
    ]}


@dataclass
class Rig:
    tmp: str
    sim: Simulator
    sysfs: str
    pid_dir: str
    qemus: dict[str, StandInQemu] = field(default_factory=dict)
    others: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def root(self) -> str:
        return self.sim.mountpoint

    def start_qemu(self, name: str, extra_threads: int = 0,
                   cpus: set[int] | None = None) -> StandInQemu:
        q = StandInQemu(name, self.pid_dir, extra_threads=extra_threads, cpus=cpus).start()
        self.qemus[name] = q
        return q

    def backend(self, **kw: Any) -> ResctrlBackend:
        return ResctrlBackend(self.root, sysfs_root=self.sysfs, proc_root="/proc",
                              pid_dir=self.pid_dir, prefix=PREFIX, verify_mount=True, **kw)

    def our_groups(self) -> list[str]:
        """Paths (relative to the mount) of every group with our prefix."""
        out = []
        for ctrl in fs.list_ctrl_groups(self.root):
            for name in fs.list_mon_groups(self.root, ctrl):
                if name.startswith(PREFIX):
                    out.append(os.path.join(ctrl, "mon_groups", name) if ctrl
                               else os.path.join("mon_groups", name))
        return sorted(out)

    def kernel_mbm_total(self, uuid: str) -> int:
        """Sum of mbm_total_bytes of the instance's group(s), read from the mount."""
        total = 0
        for rel in self.our_groups():
            if rel.endswith(PREFIX + uuid):
                for _dom, dom_dir in fs.list_domains(self.root):
                    v = fs.read_group_event(os.path.join(self.root, rel), dom_dir,
                                                 "mbm_total_bytes")
                    total += v
        return total


@pytest.fixture
def rig(tmp_path: Any) -> Iterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def _make(scenario: dict[str, Any] | None = None, topology: str = "intel-2s") -> Rig:
        tmp = str(tmp_path)
        sysfs = os.path.join(tmp, "sys")
        get_topology(topology).write_sysfs(sysfs)
        pid_dir = os.path.join(tmp, "run")
        os.makedirs(pid_dir, exist_ok=True)
        sc = {"clock": "manual", "limbo_seconds": 0}
        sc.update(scenario or {})
        sim = Simulator(os.path.join(tmp, "resctrl"), topology, sc)
        r = Rig(tmp, sim, sysfs, pid_dir)
        made.append(r)
        sim.start()
        return r

    yield _make
    for r in made:
        for q in r.qemus.values():
            q.stop()
        for p in r.others:
            if p.poll() is None:
                p.kill()
            p.wait()
        r.sim.stop()
        assert mount_fstype(r.sim.mountpoint) is None


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# --------------------------------------------------------------------- churn
def test_churn_groups_follow_instances_fds_constant(rig: Callable[..., Rig]) -> None:
    names = [f"instance-{i:08x}" for i in range(CHURN_POOL)]
    r = rig({"processes": [load(n) for n in names]})
    for n in names:
        r.start_qemu(n)
    backend = r.backend()
    mon = CacheMonitor(backend)
    # cycle 0: the first half of the pool runs; then every cycle the running half
    # stops and the other half starts under new uuids (new instances, new groups)
    running = {n: new_uuid() for n in names[:CHURN_SWAP]}
    starts = len(running)
    stops = 0
    cycles = 0
    fd_counts: set[int] = set()
    fds_first: int | None = None
    t0 = time.monotonic()
    try:
        while True:
            refs = [InstanceRef(u, n) for n, u in running.items()]
            res = mon.poll(refs)
            r.sim.advance(1)
            cycles += 1
            want = sorted(f"mon_groups/{PREFIX}{u}" for u in running.values())
            assert r.our_groups() == want, f"cycle {cycles}"
            assert res.unmonitored == {}, f"cycle {cycles}"
            assert set(res.instances) == set(running.values()), f"cycle {cycles}"
            for u, m in res.instances.items():
                assert m.occupancy is not None and m.occupancy > 0, (cycles, u)
                assert m.mbm_total_bytes is not None, (cycles, u)
            n_fds = fds()
            if fds_first is None:
                fds_first = n_fds
            fd_counts.add(n_fds)
            assert n_fds == fds_first, f"cycle {cycles}: {n_fds} fds, first {fds_first}"
            if starts >= CHURN_STARTS:
                break
            idle = [n for n in names if n not in running]
            stops += len(running)
            running = {n: new_uuid() for n in idle[:CHURN_SWAP]}
            starts += len(running)
        mon.poll([])
        stops += len(running)
        assert r.our_groups() == []
        elapsed = time.monotonic() - t0
    finally:
        mon.close()
    print(f"\nchurn: {starts} instance starts, {stops} stops in {cycles + 1} cycles, "
          f"{elapsed:.1f} s ({starts / elapsed:.0f} starts/s), mkdir {backend.mkdirs}, "
          f"rmdir {backend.rmdirs}, tasks writes {backend.writes}, fds {sorted(fd_counts)}")
    assert backend.mkdirs == starts and backend.rmdirs == stops == starts


# ------------------------------------------------------------ agent processes
@dataclass
class Agent:
    proc: subprocess.Popen[bytes]
    out: str

    def lines(self) -> list[dict[str, Any]]:
        return whole_lines(self.out)

    def wait_lines(self, n: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []

        def enough() -> list[dict[str, Any]] | None:
            got[:] = self.lines()
            return list(got) if len(got) >= n else None

        def exited() -> None:
            if self.proc.poll() is not None and len(self.lines()) < n:
                raise AssertionError(f"agent exited with {self.proc.returncode} after "
                                     f"{len(got)} cycles; see {self.out[:-6]}.log")

        return wait_until(enough, what=f"{n} agent cycles", timeout=timeout, interval=0.01,
                          fail=exited,
                          error=lambda _: AssertionError(
                              f"agent made {len(got)} cycles, wanted {n}"))


def write_refs(path: str, refs: list[tuple[str, str]]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(refs, f)
    os.replace(tmp, path)


def start_agent(r: Rig, name: str, refs_path: str, *, cycles: int = 1000000,
                sleep: float = 0.0, go: str | None = None, step: str | None = None) -> Agent:
    cfg = os.path.join(r.tmp, f"{name}.json")
    out = os.path.join(r.tmp, f"{name}.jsonl")
    with open(cfg, "w", encoding="utf-8") as f:
        json.dump({"root": r.root, "sysfs": r.sysfs, "pid_dir": r.pid_dir, "refs": refs_path,
                   "out": out, "cycles": cycles, "sleep": sleep, "go": go,
                   "step": step}, f)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(paths.REPO), env.get("PYTHONPATH", "")) if p)
    with open(os.path.join(r.tmp, f"{name}.log"), "ab") as log:
        proc = subprocess.Popen([sys.executable, AGENT, cfg], env=env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    r.others.append(proc)
    return Agent(proc, out)


def uuid_of(rel: str) -> str:
    return os.path.basename(rel)[len(PREFIX):]


def test_kill9_mid_cycle_then_restart_adopts_sweeps_and_continues(
        rig: Callable[..., Rig]) -> None:
    a_names = [f"instance-a{i:07x}" for i in range(8)]
    b_names = [f"instance-b{i:07x}" for i in range(24)]
    r = rig({"processes": [load(n) for n in a_names + b_names]})
    for n in a_names:
        r.start_qemu(n)
    for n in b_names:
        r.start_qemu(n, extra_threads=3)  # 4 tasks writes each: a longer cycle to land in
    ua = {n: new_uuid() for n in a_names}
    ub = {n: new_uuid() for n in b_names}
    refs = os.path.join(r.tmp, "refs.json")
    write_refs(refs, [(ua[n], n) for n in a_names])
    first = start_agent(r, "agent1", refs, sleep=0.01)
    n0 = len(first.wait_lines(1))
    assert first.lines()[0]["unmonitored"] == {}
    r.sim.advance(10)  # 10 s of 2 x 1000 B/s per instance
    old = first.wait_lines(n0 + 2)[-1]
    assert set(old["instances"]) == set(ua.values())
    old_mbm = {u: v["mbm_total"] for u, v in old["instances"].items()}
    assert all(v == 20000 for v in old_mbm.values()), old_mbm

    # The agent gets 24 new instances and loses two; kill -9 it while it makes groups.
    write_refs(refs, [(ua[n], n) for n in a_names[2:]] + [(ub[n], n) for n in b_names])
    b_uuids = set(ub.values())
    polls = 0

    def making_groups() -> bool:
        nonlocal polls
        polls += 1
        return any(g[len(PREFIX):] in b_uuids
                   for g in os.listdir(os.path.join(r.root, "mon_groups")))

    # interval 0: kill as soon as the first group is seen, mid-cycle
    wait_until(making_groups, what="the agent to make a group", timeout=30, interval=0,
               error=lambda _: AssertionError("the agent never started making groups"))
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait()
    assert first.proc.returncode == -signal.SIGKILL
    time.sleep(0.2)  # a mkdir already in the daemon completes
    at_kill = r.our_groups()
    b_made = [g for g in at_kill if uuid_of(g) in b_uuids]
    print(f"\nkill -9: agent killed after {polls} listings with {len(b_made)}/{len(b_names)} "
          f"new groups made, {len(at_kill)} groups of ours in the mount")
    assert 1 <= len(b_made) < len(b_names), "not killed mid-cycle"

    # The new agent: A[4:] and every B; A[2:4] (still had groups) are now orphans.
    r.sim.advance(5)
    kept = a_names[4:]
    orphans = [g for g in at_kill if uuid_of(g) in {ua[n] for n in a_names[:4]}]
    assert {uuid_of(g) for g in orphans} >= {ua[n] for n in a_names[2:4]}
    kernel = {ua[n]: r.kernel_mbm_total(ua[n]) for n in kept}
    write_refs(refs, [(ua[n], n) for n in kept] + [(ub[n], n) for n in b_names])
    second = start_agent(r, "agent2", refs, cycles=3)
    assert second.proc.wait(timeout=120) == 0
    lines = second.lines()
    assert len(lines) == 3 and not any("error" in ln for ln in lines)
    want = {ua[n] for n in kept} | b_uuids
    for ln in lines:
        assert ln["unmonitored"] == {} and set(ln["instances"]) == want
    assert {uuid_of(g) for g in r.our_groups()} == want and len(r.our_groups()) == len(want)
    # adopted: only the missing B groups were made; orphans swept
    assert lines[0]["mkdirs"] == len(b_names) - len(b_made)
    assert lines[0]["rmdirs"] == len(orphans)
    # every thread of every instance sits in its group
    for n in kept + b_names:
        u = ua.get(n) or ub[n]
        g = os.path.join(r.root, "mon_groups", PREFIX + u)
        assert fs.read_tasks(g) == set(r.qemus[n].tids), n
    # MBM cumulative continues from the kernel counter, not from 0
    for n in kept:
        u = ua[n]
        new = lines[0]["instances"][u]["mbm_total"]
        assert new == kernel[u] == old_mbm[u] + 10000, (n, new, kernel[u], old_mbm[u])
    print(f"restart: adopted {len(kept)} + {len(b_made)} groups, made "
          f"{lines[0]['mkdirs']}, swept {lines[0]['rmdirs']} orphans; MBM "
          f"{old_mbm[ua[kept[0]]]} -> {lines[0]['instances'][ua[kept[0]]]['mbm_total']}")


# ------------------------------------------------------- RMIDs run out
def unmonitored_meter(res: Any) -> tuple[Any, Any]:
    """cache.instances.unmonitored (volume, metadata['unmonitored']) for this cycle."""
    from ceilometer_cmt.pollsters import runtime
    from ceilometer_cmt.pollsters.host import CacheInstancesUnmonitoredPollster

    # measure() only reads the cycle shared in the polling cache: no agent needed
    pollster = CacheInstancesUnmonitoredPollster.__new__(CacheInstancesUnmonitoredPollster)
    volume, meta = pollster.measure(None, {runtime.CACHE_KEY: res})
    return volume, meta["unmonitored"]


def test_more_instances_than_rmids_stable_then_limbo(rig: Callable[..., Rig]) -> None:
    names = [f"instance-{i:08x}" for i in range(8)]
    r = rig({"processes": [load(n) for n in names]})
    for n in names:
        r.start_qemu(n)
    r.sim.set_rmids(4)  # RMID 0 is the default group's: 3 monitor groups fit
    uuids = {n: f"{i:08x}-0000-4000-8000-000000000000" for i, n in enumerate(names)}
    refs = [InstanceRef(uuids[n], n) for n in names]
    backend = r.backend()
    mon = CacheMonitor(backend)
    try:
        monitored_sets = []
        for cycle in range(20):
            res = mon.poll(refs)
            r.sim.advance(1)
            monitored_sets.append(frozenset(res.instances))
            assert len(res.instances) == 3, cycle
            assert set(res.unmonitored) == set(uuids.values()) - set(res.instances)
            assert all(reason == "no free RMID (ENOSPC)"
                       for reason in res.unmonitored.values()), res.unmonitored
            assert res.monitors_used == 4
            assert {uuid_of(g) for g in r.our_groups()} == set(res.instances)
            assert unmonitored_meter(res) == (5, res.unmonitored)
        assert len(set(monitored_sets)) == 1, "the monitored set flapped"
        first3 = {uuids[n] for n in names[:3]}
        assert monitored_sets[0] == first3
        assert backend.mkdirs == 3  # one failing mkdir per cycle, never a retry storm
        # EBUSY: one instance leaves while freed RMIDs sit in limbo for 30 s
        r.sim.set_limbo(30)
        refs = refs[1:]
        res = mon.poll(refs)
        busy = res.unmonitored
        assert set(res.instances) == {uuids[n] for n in names[1:3]}
        assert busy and all(v == "RMIDs in limbo (EBUSY)" for v in busy.values()), busy
        assert r.sim.state()["limbo_rmids"] == 1
        r.sim.advance(10)
        assert mon.poll(refs).unmonitored == busy  # still in limbo
        r.sim.advance(21)  # limbo over: the next instance in line gets the RMID
        res = mon.poll(refs)
        assert set(res.instances) == {uuids[n] for n in names[1:4]}
        assert all(v == "no free RMID (ENOSPC)" for v in res.unmonitored.values())
        assert set(res.unmonitored) == {uuids[n] for n in names[4:]}
        print(f"\nrmids 4, 8 instances: 3 monitored in each of 20 cycles (same set), "
              f"5 unmonitored (ENOSPC), mkdirs {backend.mkdirs}; limbo 30 s: "
              f"{len(busy)} EBUSY until the clock passed it, then {names[3]} monitored")
    finally:
        mon.close()


# ------------------------------------------------------- faults and resets
def instance_meter_values(m: Any) -> dict[str, Any]:
    """What every per-instance pollster would publish (None: no sample)."""
    from ceilometer_cmt.pollsters import instance

    return {cls.meter: cls.value(m) for cls in vars(instance).values()
            if isinstance(cls, type) and issubclass(cls, instance._InstancePollster)
            and cls is not instance._InstancePollster}


#: the meters of Intel AET events, absent on the hosts of this test
NO_AET_HERE = ("energy.core", "power.core", "cpu.ipc", "cache.llc.miss.stall.ratio")


@pytest.mark.parametrize("value", ["Unavailable", "Error", "Unassigned"])
def test_fault_values_give_no_sample_and_cumulative_stays_monotonic(
        rig: Callable[..., Rig], value: str) -> None:
    names = ["instance-00000001", "instance-00000002"]
    r = rig({"processes": [load(n) for n in names]})
    for n in names:
        r.start_qemu(n)
    u1, u2 = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"
    refs = [InstanceRef(u1, names[0]), InstanceRef(u2, names[1])]
    now = [0.0]
    mon = CacheMonitor(r.backend(), clock=lambda: now[0])
    history: dict[tuple[str, str], list[int]] = {}

    def poll() -> dict[str, Any]:
        res = mon.poll(refs)
        assert res.unmonitored == {}
        out = {}
        for u in (u1, u2):
            vals = instance_meter_values(res.instances[u])
            # this host (intel-2s) has no AET PERF_PKG events: those meters give no data
            assert all(vals.pop(m) is None for m in NO_AET_HERE), vals
            for meter, v in vals.items():
                assert v is None or v != 0 or meter.startswith("memory.bandwidth"), (meter, v)
                if meter.endswith(".bytes") and v is not None:
                    seq = history.setdefault((u, meter), [])
                    assert not seq or v >= seq[-1], (u, meter, seq[-1], v)  # monotonic
                    seq.append(v)
            out[u] = vals
        return out

    def tick(seconds: float = 60) -> None:
        r.sim.advance(seconds)
        now[0] += seconds

    poll()
    tick()
    clean = poll()
    assert clean[u1]["cache.occupancy"] == 2 * (2**20 // 49152 * 49152)
    assert clean[u1]["memory.bandwidth.total.bytes"] == 120000
    assert clean[u1]["memory.bandwidth.total"] == pytest.approx(2000.0)
    gone = {"llc_occupancy": {"cache.occupancy", "cache.occupancy.percent", "cpu_l3_cache"},
            "mbm_total_bytes": {"memory.bandwidth.total.bytes", "memory.bandwidth.total"},
            "mbm_local_bytes": {"memory.bandwidth.local.bytes", "memory.bandwidth.local"}}
    none_seen = 0
    for event, meters in gone.items():
        r.sim.fault(group=f"mon_groups/{PREFIX}{u1}", domain=0, event=event, value=value)
        tick()
        got = poll()
        for meter in meters:
            assert got[u1][meter] is None, (event, meter, got[u1][meter])
            none_seen += 1
        others = set(got[u1]) - meters - {"memory.bandwidth.total", "memory.bandwidth.local"}
        assert all(got[u1][m] is not None for m in others), (event, got[u1])
        assert all(v is not None for v in got[u2].values()), got[u2]  # the other instance
        r.sim.clear_faults()
    tick()
    back = poll()
    for u in (u1, u2):  # the fault hid nothing from the cumulative value
        assert back[u]["memory.bandwidth.total.bytes"] == r.kernel_mbm_total(u) == 5 * 120000
    # a rate needs two complete reads in a row: none yet after the faulted read
    assert back[u1]["memory.bandwidth.local"] is None
    tick()
    back = poll()
    assert all(v is not None for v in back[u1].values())
    # counters reset under us: cumulative carries on, no rate across the reset
    before = back[u1]["memory.bandwidth.total.bytes"]
    assert r.sim.reset_counters("*") >= 2
    at_reset = poll()
    assert at_reset[u1]["memory.bandwidth.total.bytes"] == before
    assert at_reset[u1]["memory.bandwidth.total"] is None  # no rate across the reset
    tick()
    after = poll()
    assert after[u1]["memory.bandwidth.total.bytes"] == before + r.kernel_mbm_total(u1) \
        == before + 120000
    assert after[u1]["memory.bandwidth.total"] == pytest.approx(2000.0)
    mon.close()
    print(f"\n{value}: {none_seen} faulted meters gave no sample (None, never 0); the other "
          f"instance unaffected; cumulative {before} -> {after[u1]['memory.bandwidth.total.bytes']}"
          " across a counter reset, monotonic over "
          f"{sum(len(s) for s in history.values())} cumulative values")


# ------------------------------------------ a group made again behind our back
@pytest.mark.parametrize("threads_put_back", [True, False])
def test_group_removed_and_made_again_under_the_same_name_is_counted_once(
        rig: Callable[..., Rig], threads_put_back: bool) -> None:
    """Another process removes our group and makes one of the same name (e.g. a
    cleanup racing a second agent). The agent's kept value files answer ENOENT
    (kernfs: ENODEV); the group found at the path is not the one whose counters
    we read: its counters start again under new keys (nothing lost, nothing
    counted twice), our threads are placed in it, and its files are kept open."""
    name = "instance-00000001"
    r = rig({"processes": [load(name)]})
    r.start_qemu(name, extra_threads=1)
    u = "11111111-1111-4111-8111-111111111111"
    refs = [InstanceRef(u, name)]
    now = [0.0]
    backend = r.backend()
    mon = CacheMonitor(backend, clock=lambda: now[0])
    try:
        mon.poll(refs)
        r.sim.advance(100)
        now[0] += 100
        assert mon.poll(refs).instances[u].mbm_total_bytes == 2 * 100 * 1000
        group = os.path.join(r.root, "mon_groups", PREFIX + u)
        tids = sorted(fs.read_tasks(group))
        os.rmdir(group)
        os.mkdir(group)
        if threads_put_back:
            for tid in tids:
                fs.write_tasks(os.path.join(group, "tasks"), [tid])
        r.sim.advance(200)
        now[0] += 200
        res = mon.poll(refs)
        assert res.unmonitored == {}
        assert sorted(fs.read_tasks(group)) == tids  # ours, whoever put them
        # counted from the new group's start: 200 s of traffic if the threads
        # were there, none if the group was left empty until this cycle
        got = res.instances[u].mbm_total_bytes
        assert got == 2 * 100 * 1000 + (2 * 200 * 1000 if threads_put_back else 0)
        assert got == 2 * 100 * 1000 + r.kernel_mbm_total(u)
        r.sim.advance(1)
        with file_calls(r.root) as calls:
            mon.poll(refs)
        assert [p for p in calls.opens if "/mon_data/" in p] == []  # kept open again
    finally:
        mon.close()


def test_l3_domain_offline_and_back_is_counted_once_with_files_kept_open(
        rig: Callable[..., Rig]) -> None:
    """All CPUs of socket 1 go offline and come back (real FUSE, kept fds that
    answer ENODEV): the instance stays monitored, nothing is recreated, its
    occupancy is socket 0's while socket 1 is away, its MBM is no data; back
    online the counters go on under the same keys (counted once) and the
    value files are kept open again."""
    name = "instance-00000001"
    r = rig({"processes": [load(name)]})
    r.start_qemu(name)
    u = "11111111-1111-4111-8111-111111111111"
    refs = [InstanceRef(u, name)]
    now = [0.0]
    backend = r.backend()
    mon = CacheMonitor(backend, clock=lambda: now[0])

    def tick(seconds: float) -> None:
        r.sim.advance(seconds)
        now[0] += seconds

    try:
        mon.poll(refs)
        tick(100)
        assert mon.poll(refs).instances[u].mbm_total_bytes == 2 * 100 * 1000
        made = (backend.mkdirs, backend.writes)
        r.sim.set_l3_online(1, False)
        tick(100)
        for _ in range(2):
            res = mon.poll(refs)
            assert res.unmonitored == {}
            m = res.instances[u]
            assert m.occupancy_domains is not None and list(m.occupancy_domains) == [0]
            assert m.mbm_total_bytes is None  # part of its counters gave nothing
        assert (backend.mkdirs, backend.writes) == made
        r.sim.set_l3_online(1, True)
        tick(100)
        back = mon.poll(refs).instances[u]
        assert back.mbm_total_bytes == r.kernel_mbm_total(u) == 5 * 100 * 1000
        assert list(back.occupancy_domains or {}) == [0, 1]
        tick(1)
        with file_calls(r.root) as calls:
            mon.poll(refs)
        assert [p for p in calls.opens if "/mon_data/" in p] == []
    finally:
        mon.close()


# ------------------------------------------------------- two agents, one host
@pytest.mark.parametrize("with_cachetune", [False, True])
def test_two_agents_share_the_host_and_leave_foreign_groups_alone(
        rig: Callable[..., Rig], with_cachetune: bool) -> None:
    names = [f"instance-{i:08x}" for i in range(16)]
    r = rig({"processes": [load(n) for n in names]})
    for n in names:
        r.start_qemu(n, extra_threads=2)
    # libvirt <cachetune vcpus='0-1'> of instance 0: a control group with its vCPU threads
    cachetune = os.path.join(r.root, "qemu-1-instance-00000000-vcpus_0-1")
    vcpus = r.qemus[names[0]].tids[1:] if with_cachetune else ()
    os.mkdir(cachetune)
    fd = os.open(os.path.join(cachetune, "tasks"), os.O_WRONLY)
    try:
        for tid in vcpus:
            os.write(fd, f"{tid}\n".encode())  # the kernel takes one tid per write
    finally:
        os.close(fd)
    # foreign monitor groups: an empty one, one watching a thread of instance 1,
    # and libvirt's <monitor> inside the cachetune group
    foreign = {
        os.path.join(r.root, "mon_groups", "pqos-42"): set(),
        os.path.join(r.root, "mon_groups", "operator-watch"): {r.qemus[names[1]].tids[2]},
        os.path.join(cachetune, "mon_groups", "vcpus_0-1"): set(),
    }
    for path, tids in foreign.items():
        os.mkdir(path)
        for tid in tids:
            with open(os.path.join(path, "tasks"), "w") as f:
                f.write(f"{tid}\n")
    untouched = {cachetune: set(vcpus), **foreign}
    assert all(fs.read_tasks(p) == t for p, t in untouched.items())

    uuids = {n: new_uuid() for n in names}
    refs = os.path.join(r.tmp, "refs.json")
    first_set, second_set = names[:12], names[:8] + names[12:]
    write_refs(refs, [(uuids[n], n) for n in first_set])
    go = os.path.join(r.tmp, "go")
    cycles = 40
    agents = [start_agent(r, f"agent{i}", refs, cycles=cycles, go=go) for i in (1, 2)]
    time.sleep(0.5)  # both importing and waiting on the go file
    with open(go, "w"):
        pass  # both start at once: they race to make the same 12 groups
    for a in agents:
        a.wait_lines(10)
    write_refs(refs, [(uuids[n], n) for n in second_set])  # 4 leave, 4 arrive
    for a in agents:
        assert a.proc.wait(timeout=120) == 0
    per_agent = [a.lines() for a in agents]
    want_final = {uuids[n] for n in second_set}
    transient: list[str] = []
    for lines in per_agent:
        assert len(lines) == cycles
        assert not [ln["error"] for ln in lines if "error" in ln]
        for ln in lines:
            transient.extend(ln["unmonitored"].values())
            for m in ln["instances"].values():
                assert m["occupancy"] is not None and m["mbm_total"] is not None
        assert lines[0]["unmonitored"] == {}
        assert set(lines[0]["instances"]) == {uuids[n] for n in first_set}
        for ln in lines[-5:]:
            assert ln["unmonitored"] == {} and set(ln["instances"]) == want_final
    groups = r.our_groups()
    assert len(groups) == len(set(groups))
    assert sorted(groups) == sorted(
        [f"mon_groups/{PREFIX}{uuids[n]}" for n in second_set]
        + ([f"qemu-1-instance-00000000-vcpus_0-1/mon_groups/{PREFIX}{uuids[names[0]]}"]
           if vcpus else []))
    for n in second_set:
        got = fs.read_tasks(os.path.join(r.root, "mon_groups", PREFIX + uuids[n]))
        expect = set(r.qemus[n].tids)
        if n == names[0]:
            expect -= set(vcpus)
        if n == names[1]:
            expect -= foreign[os.path.join(r.root, "mon_groups", "operator-watch")]
        assert got == expect, n
    if vcpus:
        assert fs.read_tasks(os.path.join(
            cachetune, "mon_groups", PREFIX + uuids[names[0]])) == set(vcpus)
    for path, tids in untouched.items():
        assert os.path.isdir(path) and fs.read_tasks(path) == tids, path
    mk = [ln[-1]["mkdirs"] for ln in per_agent]
    rm = [ln[-1]["rmdirs"] for ln in per_agent]
    print(f"\ntwo agents x {cycles} cycles: mkdirs {mk} (sum {sum(mk)} for "
          f"{len(set(first_set) | set(second_set)) + bool(vcpus)} groups), rmdirs {rm}, "
          f"{len(transient)} transient unmonitored {sorted(set(transient))}, no errors, "
          f"no duplicates; {len(untouched)} foreign/libvirt groups untouched")


# ------------------------------------------------------------ hostile input
THREADED_SLEEPER = ("import threading, time\n"
                    "for _ in range(2):\n"
                    "    threading.Thread(target=time.sleep, args=(300,), daemon=True).start()\n"
                    "time.sleep(300)\n")


def spawn_with_pid(pid: int, argv: list[str]) -> subprocess.Popen[bytes] | None:
    """A process that gets ``pid`` (root: /proc/sys/kernel/ns_last_pid), or None."""
    for _ in range(50):
        try:
            with open("/proc/sys/kernel/ns_last_pid", "w") as f:
                f.write(str(pid - 1))
        except OSError:
            return None
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        if p.pid == pid:
            return p
        p.kill()
        p.wait()
    return None


def test_hostile_names_pidfiles_and_cmdlines_stay_unmonitored(rig: Callable[..., Rig]) -> None:
    good = ["instance-00000001", "instance-00000002"]
    r = rig({"processes": [load(n) for n in good + ["instance-victim"]]})
    for n in good:
        r.start_qemu(n, extra_threads=1)
    victim = r.start_qemu("instance-victim")
    sleeper = subprocess.Popen(["sleep", "300"], stdin=subprocess.DEVNULL)
    r.others.append(sleeper)
    pidfiles = {
        "garbage": b"12ab\n",
        "empty": b"",
        "negative": b"-1\n",
        "huge": b"99999999999999999999\n",
        "binary": b"\xff\xfe\x00\x01",
        "impostor": f"{victim.pid}\n".encode(),  # a live qemu of another guest
        "reused": f"{sleeper.pid}\n".encode(),  # a live pid that is no qemu
        "dead": b"4194304\n",
    }
    for name, body in pidfiles.items():
        with open(os.path.join(r.pid_dir, f"{name}.pid"), "wb") as f:
            f.write(body)
    os.symlink("/etc/passwd", os.path.join(r.pid_dir, "symlinked.pid"))
    # a pidfile outside pid_dir naming a good qemu: a traversal would find it
    with open(os.path.join(r.tmp, "outside.pid"), "w") as f:
        f.write(f"{r.qemus[good[0]].pid}\n")
    hostile_names = {
        "../outside": "refusing odd libvirt domain name",
        "a/b": "refusing odd libvirt domain name",
        "..": "refusing odd libvirt domain name",
        ".": "refusing odd libvirt domain name",
        "": "refusing odd libvirt domain name",
        "new\nline": "refusing odd libvirt domain name",
        "nul\x00byte": "refusing odd libvirt domain name",
        "x" * 300: "refusing odd libvirt domain name",
        "garbage": "bad pidfile", "empty": "bad pidfile", "negative": "bad pidfile",
        "huge": "bad pidfile", "binary": "bad pidfile",
        "symlinked": "pidfile",  # bad pidfile, or refused as a symlink
        "impostor": "is not the qemu of 'impostor' (pid reused?)",
        "reused": "is not the qemu of 'reused' (pid reused?)",
        "dead": "is gone",
        "never-started": "instance not running",
    }
    hostile = {f"{i:08x}-9999-4999-8999-999999999999": n
               for i, n in enumerate(hostile_names)}
    good_uuids = {f"{i:08x}-0000-4000-8000-000000000000": n for i, n in enumerate(good)}
    refs = [InstanceRef(u, n) for u, n in good_uuids.items()]
    refs[1:1] = [InstanceRef(u, n) for u, n in hostile.items()]  # good ones around them
    refs.append(InstanceRef("not-a-uuid/../../x", good[0]))
    refs.append(InstanceRef("", good[1]))
    backend = r.backend()
    mon = CacheMonitor(backend)
    try:
        for cycle in range(3):
            res = mon.poll(refs)
            r.sim.advance(1)
            assert set(res.instances) == set(good_uuids), cycle
            for u, m in res.instances.items():
                assert m.occupancy and m.mbm_total_bytes is not None, (cycle, u)
            assert len(res.unmonitored) == len(hostile) + 2
            for u, name in hostile.items():
                assert hostile_names[name] in res.unmonitored[u], (name, res.unmonitored[u])
            assert res.unmonitored["not-a-uuid/../../x"] == "instance id is not a UUID"
            assert res.unmonitored[""] == "instance id is not a UUID"
            assert r.our_groups() == sorted(f"mon_groups/{PREFIX}{u}" for u in good_uuids)
        # nobody's threads but the good instances' moved; the victim stays where it was
        assert fs.read_tasks(os.path.join(r.root, "mon_groups", PREFIX + "00000000-0000"
                                               "-4000-8000-000000000000")) == set(
            r.qemus[good[0]].tids)
        root_tasks = fs.read_tasks(r.root)
        assert set(victim.tids) <= root_tasks and sleeper.pid in root_tasks
        assert backend.mkdirs == 2 and backend.writes == 4
    finally:
        mon.close()
    print(f"\nhostile: {len(hostile) + 2} hostile refs unmonitored with their reasons over 3 "
          f"cycles, {len(good)} good ones read every cycle, nothing raised")


def test_pid_reused_between_cycles_is_not_adopted(rig: Callable[..., Rig]) -> None:
    name = "instance-00000001"
    r = rig({"processes": [load(name)]})
    q = r.start_qemu(name)
    uuid = "11111111-1111-4111-8111-111111111111"
    refs = [InstanceRef(uuid, name)]
    backend = r.backend()
    try:
        assert uuid in backend.sync(refs).readings
        pid = q.pid
        # qemu dies hard: libvirt has not removed its pidfile yet
        proc, q.proc = q.proc, None
        assert proc is not None
        proc.kill()
        proc.wait()
        other = spawn_with_pid(pid, [sys.executable, "-I", "-S", "-c", THREADED_SLEEPER])
        if other is None:
            pytest.skip("cannot steer pid allocation here (needs root, ns_last_pid)")
        r.others.append(other)
        with contextlib.suppress(TimeoutError):  # the checks below hold for any thread count
            wait_until(lambda: len(os.listdir(f"/proc/{pid}/task")) >= 3,
                       what=f"the 3 threads of pid {pid}", timeout=10, interval=0.01)
        tids = {int(t) for t in os.listdir(f"/proc/{pid}/task")}
        cycle = backend.sync(refs)
        group = os.path.join(r.root, "mon_groups", PREFIX + uuid)
        moved = tids & fs.read_tasks(group) if os.path.isdir(group) else set()
        state = "read" if uuid in cycle.readings else "unmonitored"
        print(f"\npid {pid} reused by a 3-thread process: instance {state}, "
              f"{len(moved)} of its threads moved into the instance's group")
        assert not moved
        assert uuid not in cycle.readings and "pid reused" in cycle.unmonitored[uuid]
    finally:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(r.pid_dir, name + ".pid"))
        backend.close()


def test_fifo_pidfile_does_not_block_the_cycle(rig: Callable[..., Rig]) -> None:
    import threading

    name = "instance-00000001"
    r = rig({"processes": [load(name)]})
    r.start_qemu(name)
    fifo = os.path.join(r.pid_dir, "fifo.pid")
    os.mkfifo(fifo)
    blocked: list[bool] = []

    def unblock() -> None:
        # Still a reader on the FIFO after 2 s: the cycle is stuck in open(). Open the
        # writing end to let it go (O_NONBLOCK: ENXIO when nobody reads).
        time.sleep(2)
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            blocked.append(False)
            return
        blocked.append(True)
        os.write(fd, b"garbage")
        os.close(fd)

    helper = threading.Thread(target=unblock, daemon=True)
    helper.start()
    backend = r.backend()
    try:
        u1, u2 = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"
        cycle = backend.sync([InstanceRef(u2, "fifo"), InstanceRef(u1, name)])
        helper.join()
        print(f"\nFIFO pidfile: cycle blocked in open(): {blocked[0]}; "
              f"reason {cycle.unmonitored.get(u2)!r}")
        assert u1 in cycle.readings and u2 in cycle.unmonitored
        assert blocked == [False]
    finally:
        backend.close()
