"""Reliability suite, MBM counter assignment and other resctrl users.

A real agent process (tests/support/reliability_agent.py) polls the FUSE
resctrl simulator in lockstep with the test (its ``step`` file): the test
changes the host between two cycles (stand-in qemus stop and start, another
tool writes our groups' ``mbm_L3_assignments``, ``pqos -r`` removes every
monitor group), moves the simulator's manual clock by DT, lets one cycle run
and checks that cycle's line against what the simulator (the kernel's
stand-in) shows through the mount. The kernel's files are read here as raw
text, not with the plugin's parsers.

Preset ``amd-abmc``: two L3 domains (CPUs 0-7, 8-15), 8 MBM counters each,
the default group holding total and local in both from boot. Every stand-in
is pinned to CPU 0 (on any machine): it may run in domain 0 only, so 6
counters serve every instance (Documentation/filesystems/resctrl.rst, "mbm_event"
mode; doc/kernel-facts-mbm-assign-and-aet.md 1.6 to 1.8).
"""

from __future__ import annotations

import os
import random
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from ceilometer_cmt.backends.resctrl.backend import RELIST
from tests.functional import test_reliability as base
from tests.functional.test_reliability import PREFIX, Agent, Rig, new_uuid, rig, write_refs
from tests.support.abmc_files import (
    kernel_assignments,
    kernel_available,
    kernel_value,
    write_assignment,
)

pytestmark = base.pytestmark
FIXTURES = (rig,)  # the suite's rig fixture, used here by name

MIB = 1024 * 1024
TOTAL, LOCAL = 100 * MIB, 60 * MIB  # bytes/s each instance moves in domain 0
DT = 10.0  # simulated seconds per cycle
EVENTS = {"mbm_total_bytes": "mbm_total", "mbm_local_bytes": "mbm_local"}
RATE = {"mbm_total": TOTAL, "mbm_local": LOCAL}


def abmc_load(name: str) -> dict[str, Any]:
    return {"match": {"cmdline": f"guest={name},"}, "timeline": [
        {"t": 0, "occupancy": {0: "4MiB"}, "mbm_total": {0: TOTAL}, "mbm_local": {0: LOCAL}}]}


# ------------------------------------------------------ the kernel's files, raw
def group_path(r: Rig, uuid: str) -> str:
    return os.path.join(r.root, "mon_groups", PREFIX + uuid)


# ------------------------------------------------------------ lockstep agent
@dataclass
class Stepped:
    """An agent process that runs one cycle per :meth:`cycle`."""

    r: Rig
    agent: Agent
    step: str
    refs: str
    n: int = 0
    clock: float = 0.0

    def cycle(self, refs: list[tuple[str, str]], advance: float = DT) -> dict[str, Any]:
        write_refs(self.refs, refs)
        if advance:
            self.clock = self.r.sim.advance(advance)
        tmp = self.step + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(f"{self.n + 1} {self.clock}\n")
        os.replace(tmp, self.step)
        line = self.agent.wait_lines(self.n + 1)[self.n]
        assert "error" not in line, line["error"]
        self.n += 1
        return line

    def log(self) -> str:
        with open(self.agent.out[:-len(".jsonl")] + ".log", encoding="utf-8",
                  errors="replace") as f:
            return f.read()


def start_stepped(r: Rig, name: str, cycles: int) -> Stepped:
    refs = os.path.join(r.tmp, f"{name}-refs.json")
    write_refs(refs, [])
    step = os.path.join(r.tmp, f"{name}.step")
    return Stepped(r, base.start_agent(r, name, refs, cycles=cycles, step=step), step, refs)


@dataclass
class Cumulative:
    """Checks each (instance, meter) cumulative value against the last one."""

    last: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    checked: int = 0

    def check(self, cycle: int, uuid: str, meter: str, value: int | None) -> int | None:
        """Never decreasing; never more than the traffic since the last value
        (a restarted counter counted whole, or twice, would be). Returns the
        increase since the last value (None: no value now or before)."""
        if value is None:
            return None
        prev = self.last.get((uuid, meter))
        self.last[(uuid, meter)] = (cycle, value)
        self.checked += 1
        if prev is None:
            return None
        pc, pv = prev
        assert value >= pv, f"cycle {cycle}: {uuid} {meter} went back {pv} -> {value}"
        bound = RATE[meter] * DT * (cycle - pc)
        assert value - pv <= bound, (
            f"cycle {cycle}: {uuid} {meter} jumped by {value - pv} (traffic {bound})")
        return value - pv


# -------------------------------------------- 1. counters short, instances churn
def test_counter_exhaustion_and_release_under_churn_no_flapping(
        rig: Callable[..., Rig]) -> None:
    cycles, running_n = 100, 10
    names = [f"instance-{i:08x}" for i in range(50)]
    r = rig({"processes": [abmc_load(n) for n in names]}, topology="amd-abmc")
    pool = iter(names)
    running: dict[str, tuple[str, int]] = {}  # uuid -> (name, cmt:mbm_priority)
    # the uuids order the instances the test picks from: seeded, so that every
    # run stops and starts the same instances (and so takes as many counters)
    ids = random.Random(1414)

    def start_one(priority: int = 0) -> None:
        name = next(pool)
        r.start_qemu(name, extra_threads=1, cpus={0})
        running[str(uuidlib.UUID(int=ids.getrandbits(128), version=4))] = (name, priority)

    def stop_one(uuid: str) -> None:
        r.qemus.pop(running.pop(uuid)[0]).stop()

    for _ in range(running_n):
        start_one()
    s = start_stepped(r, "abmc-churn", cycles)
    rnd = random.Random(14)
    cum = Cumulative()
    held_before: dict[str, set[str]] = {}
    idle_streak = max_idle_streak = 0
    freed = regained = stops = taken = 0
    vip_started = False  # an instance of higher priority started this cycle
    counts: list[int] = []
    for c in range(cycles):
        line = s.cycle(sorted((u, n, p) for u, (n, p) in running.items()))
        got, unmon = line["instances"], line["unmonitored"]
        assert set(got) == set(running), f"cycle {c}"
        assert line["warnings"] == [], (c, line["warnings"])  # no refused write
        held: dict[str, set[str]] = {}
        for u, m in got.items():
            assert m["occupancy"], (c, u)  # occupancy sampled, counter or not
            path = group_path(r, u)
            kernel = kernel_assignments(path)
            assert not any(kernel[ev][1] for ev in EVENTS), (c, u, kernel)  # domain 0 only
            held[u] = {meter for ev, meter in EVENTS.items() if m[meter] is not None}
            assert held[u] == {meter for ev, meter in EVENTS.items() if kernel[ev][0]}, (
                c, u, kernel, m)
            for ev, meter in EVENTS.items():
                if not kernel[ev][0]:  # the kernel says Unassigned: no data, not 0
                    assert kernel_value(path, ev) == "Unassigned"
                    assert m[meter] is None, (c, u, meter)
                else:
                    cum.check(c, u, meter, m[meter])
            if len(held[u]) < 2:
                assert "MBM counter" in unmon.get(u, ""), (c, u, unmon.get(u))
            else:
                assert u not in unmon, (c, u, unmon[u])
            lost = held_before.get(u, set()) - held[u]
            if lost:  # only to an instance of higher priority, when it starts
                assert vip_started and running[u][1] == 0, (
                    f"cycle {c}: {u} lost {lost} while it ran (flapping)")
                assert "higher priority" in unmon[u], (c, u, unmon[u])
                taken += 1
            if running[u][1]:  # every total before any local; then by priority
                assert "mbm_total" in held[u], (c, u, held[u])
            regained += bool(u in held_before and held[u] - held_before[u])
        waiting = sum(2 - len(h) for h in held.values())
        free = kernel_available(r.root)[0]
        # the host meter memory.bandwidth.counters.available is the kernel's
        # after the cycle's writes
        assert line["mbm_available"] == {str(d): n for d, n in kernel_available(r.root).items()}, c
        idle_streak = idle_streak + 1 if waiting and free else 0
        max_idle_streak = max(max_idle_streak, idle_streak)
        assert idle_streak <= 1, f"cycle {c}: {free} counters free, {waiting} events wait"
        counts.append(sum(map(len, held.values())))
        held_before = held
        # churn every 3rd cycle: one instance stops (a holder or a waiting
        # one in turn), one new one starts; every 4th start with
        # cmt:mbm_priority 5 (at most 2 of them at once)
        vip_started = False
        if c % 3 == 2 and c < cycles - 2:
            holders = sorted(u for u in running if held[u])
            waiters = sorted(u for u in running if not held[u])
            pick = holders if (stops % 2 == 0 or not waiters) else waiters
            victim = rnd.choice(pick)
            freed += len(held[victim])
            stops += 1
            stop_one(victim)
            vip_started = stops % 4 == 0 and sum(p for _n, p in running.values()) < 10
            start_one(5 if vip_started else 0)
    assert s.agent.proc.wait(timeout=30) == 0
    print(f"\nABMC churn: {cycles} cycles, {running_n} instances, {stops} stops and starts "
          f"({freed} counters freed by stops); counters held by our instances per cycle "
          f"{min(counts)}..{max(counts)} of 6; {regained} instance-cycles gained a counter; "
          f"longest wait with a free counter {max_idle_streak} cycle(s); no counter lost "
          f"by a running instance but {taken} to a higher priority; {cum.checked} "
          "cumulative values monotonic")
    # with the seeded choices and uuids every run is the same: 3 counters go to
    # an instance of higher priority (a run with random uuids took 3 to 6)
    assert stops >= 30 and regained >= stops // 2 and taken >= 3


# ------------------------------------------------------ 2. reassignment storm
@dataclass
class Storm:
    """What the other tool did to one (group, event) before a cycle."""

    kind: str  # bounce (release + assign mid-interval), release, noop, other-domain
    uuid: str
    event: str


def test_reassignment_storm_cumulative_monotonic(rig: Callable[..., Rig]) -> None:
    cycles = 60
    names = [f"instance-{i:08x}" for i in range(3)]  # 3 x 2 events: domain 0's 6 counters
    r = rig({"processes": [abmc_load(n) for n in names]}, topology="amd-abmc")
    for n in names:
        r.start_qemu(n, extra_threads=1, cpus={0})
    refs = sorted((new_uuid(), n) for n in names)
    s = start_stepped(r, "abmc-storm", cycles)
    rnd = random.Random(1418)
    cum = Cumulative()
    bounced_last: set[tuple[str, str]] = set()
    raw: dict[tuple[str, str], int] = {}  # the kernel's count after the last cycle

    def read_raw() -> None:
        raw.clear()
        for u, _n in refs:
            for ev in EVENTS:
                v = kernel_value(group_path(r, u), ev)
                if v.isdigit():
                    raw[(u, ev)] = int(v)

    released: dict[tuple[str, str], int] = {}  # -> cycle it was released
    skipped_rates = bounces = releases = noops = foreign = 0
    longest_gap = 0
    line = s.cycle(refs)
    for u, _n in refs:  # each instance holds both events: 3 x 2 counters
        for meter in EVENTS.values():
            assert cum.check(0, u, meter, line["instances"][u][meter]) is None
            assert line["instances"][u][meter] is not None, (u, meter)
    read_raw()
    for c in range(1, cycles):
        storms: list[Storm] = []
        if c < cycles - 12:  # the last cycles: all back, nothing storms
            for u, _n in refs:
                for ev in EVENTS:
                    if (u, ev) in released or rnd.random() < 0.5:
                        continue
                    kinds = ["noop", "other-domain", "release"]
                    # a restart the values can show: the count after it (half an
                    # interval's traffic) is below the count before it
                    if raw.get((u, ev), 0) > RATE[EVENTS[ev]] * DT / 2:
                        kinds += ["bounce"] * 3
                    storms.append(Storm(rnd.choice(kinds), u, ev))
        half = DT / 2
        for st in storms:  # first half of the interval: the tool releases
            path = group_path(r, st.uuid)
            if st.kind in ("bounce", "release"):
                write_assignment(path, f"{st.event}:0=_")
            elif st.kind == "noop":  # assigned already: the kernel does nothing
                write_assignment(path, f"{st.event}:0=e")
            else:  # a counter where the threads never run
                write_assignment(path, f"{st.event}:1=e")
        r.sim.advance(half)
        for st in storms:  # second half: it assigns again (the counter restarts)
            if st.kind == "bounce":
                write_assignment(group_path(r, st.uuid), f"{st.event}:0=e")
        line = s.cycle(refs, advance=half)
        read_raw()
        bounced_last = {(st.uuid, st.event) for st in storms if st.kind == "bounce"}
        for st in storms:
            bounces += st.kind == "bounce"
            noops += st.kind == "noop"
            foreign += st.kind == "other-domain"
            if st.kind == "release":
                releases += 1
                released[(st.uuid, st.event)] = c
        for u, _n in refs:
            m = line["instances"][u]
            assert m["occupancy"], (c, u)
            kernel = kernel_assignments(group_path(r, u))
            for ev, meter in EVENTS.items():
                if not kernel[ev][0]:
                    assert m[meter] is None, (c, u, meter, m[meter])  # never 0
                    continue
                since = released.pop((u, ev), None)
                if since is not None:
                    longest_gap = max(longest_gap, c - since)
                inc = cum.check(c, u, meter, m[meter])
                rate = m[meter + "_rate"]
                if (u, ev) in bounced_last:
                    assert rate is None, f"cycle {c}: {u} {meter} rate {rate} across a restart"
                    skipped_rates += 1
                elif rate is not None:
                    assert rate == pytest.approx(RATE[meter], rel=0.02), (c, u, meter, rate)
                    assert inc == RATE[meter] * DT, (c, u, meter, inc)
        for u, ev in released:  # still released: the agent has not seen it yet
            assert c - released[(u, ev)] <= RELIST + 1, (
                f"cycle {c}: {u} {ev} released by another tool at cycle {released[(u, ev)]} "
                "and not assigned again")
    assert not released
    # the storm is over: every counter is back and counts at the full rate
    for u, _n in refs:
        m = line["instances"][u]
        assert m["mbm_total_rate"] == pytest.approx(TOTAL, rel=0.02)
        assert m["mbm_local_rate"] == pytest.approx(LOCAL, rel=0.02)
        # and the counters the other tool added where the threads never run
        # went back at the group's next re-read
        assert not any(d[1] for d in kernel_assignments(group_path(r, u)).values()), u
    assert s.agent.proc.wait(timeout=30) == 0
    print(f"\nreassignment storm: {cycles} cycles, {bounces} restarts (release + assign), "
          f"{releases} releases, {noops} no-op assigns, {foreign} counters in another "
          f"domain; {cum.checked} cumulative values monotonic and within the traffic, "
          f"{skipped_rates} rates skipped at restarts; a released counter back after "
          f"at most {longest_gap} cycles")


# ------------------------------------------- 3. pqos -r every 10th cycle
def pqos_reset(r: Rig) -> int:
    """As ``pqos -r`` (root, through the mount): remove every monitor group."""
    removed = 0
    top = os.path.join(r.root, "mon_groups")
    for name in sorted(os.listdir(top)):
        os.rmdir(os.path.join(top, name))
        removed += name.startswith(PREFIX)
    return removed


@pytest.mark.parametrize("topology", ["amd-abmc", "intel-2s"])
def test_pqos_reset_every_10th_cycle_nothing_lost_one_warning(
        rig: Callable[..., Rig], topology: str) -> None:
    cycles, n_inst = 50, 5
    names = [f"instance-{i:08x}" for i in range(n_inst)]
    r = rig({"processes": [abmc_load(n) for n in names]}, topology=topology)
    for n in names:
        r.start_qemu(n, extra_threads=1, cpus={0})
    refs = sorted((new_uuid(), n) for n in names)
    uuids = [u for u, _n in refs]
    s = start_stepped(r, "pqos", cycles)
    cum = Cumulative()
    removed = events = 0
    missed: set[str] = set()
    holders_before: dict[str, list[str]] = {}
    missed_total = 0
    for c in range(cycles):
        if c and c % 10 == 0:
            os.mkdir(os.path.join(r.root, "mon_groups", "pqos-7"))  # its own, gone too
            removed += pqos_reset(r)
            events += 1
        line = s.cycle(refs)
        got = line["instances"]
        now_missed = set(uuids) - set(got)
        for u in now_missed:  # with a reason, and for one cycle at most
            assert u in line["unmonitored"] and u not in missed, (c, u, line["unmonitored"])
        missed, missed_total = now_missed, missed_total + len(now_missed)
        for u in got:
            assert got[u]["occupancy"], (c, u)
            for meter in EVENTS.values():
                cum.check(c, u, meter, got[u][meter])
        # the same instances hold each event before and after a reset: the
        # groups are made again, the order of who came first is kept
        holders = {meter: sorted(u for u in got if got[u][meter] is not None)
                   for meter in EVENTS.values()}
        if not now_missed:
            assert c == 0 or holders == holders_before, (c, holders, holders_before)
            holders_before = holders
        assert set(got) | set(line["unmonitored"]) == set(uuids)
        groups = r.our_groups()
        assert sorted(groups) == sorted(f"mon_groups/{PREFIX}{u}" for u in uuids), (c, groups)
        assert line["removed_by_others"] == removed, (c, line["removed_by_others"], removed)
        warned = [w for w in line["warnings"] if "removed by another resctrl user" in w]
        assert len(warned) == (1 if c and c % 10 == 0 else 0), (c, line["warnings"])
        assert [w for w in line["warnings"] if w not in warned] == [], (c, line["warnings"])
    assert s.agent.proc.wait(timeout=30) == 0
    log = s.log()
    assert log.count("removed by another resctrl user") == events, log
    assert log.count("WARNING") == events, log
    print(f"\npqos -r ({topology}): {events} resets over {cycles} cycles removed {removed} of "
          f"our groups, all counted (removed_by_others {removed}), {events} WARNING lines in "
          f"the agent log; {missed_total} instance-cycles without samples; no duplicates; "
          f"{cum.checked} cumulative values monotonic")


# ------------------------------------------------------------ narrower cases
def test_counters_available_meter_is_the_kernels_after_the_cycle(
        rig: Callable[..., Rig]) -> None:
    """mkdir gives a new group counters in every domain (mbm_assign_on_mkdir);
    the agent gives back those of domain 1 in the same cycle: the meter shows
    the count after that, not the one the plan saw."""
    names = [f"instance-{i:08x}" for i in range(4)]
    r = rig({"processes": [abmc_load(n) for n in names]}, topology="amd-abmc")
    for n in names:
        r.start_qemu(n, cpus={0})
    s = start_stepped(r, "avail", 2)
    refs = sorted((new_uuid(), n) for n in names)
    for c in range(2):
        line = s.cycle(refs)
        assert line["mbm_available"] == {
            str(d): n for d, n in kernel_available(r.root).items()}, (c, line["mbm_available"])
    assert s.agent.proc.wait(timeout=30) == 0


def test_counter_released_behind_our_back_is_reported_and_taken_back(
        rig: Callable[..., Rig]) -> None:
    names = [f"instance-{i:08x}" for i in range(3)]
    r = rig({"processes": [abmc_load(n) for n in names]}, topology="amd-abmc")
    for n in names:
        r.start_qemu(n, cpus={0})
    s = start_stepped(r, "released", 4)
    refs = sorted((new_uuid(), n) for n in names)
    u = refs[0][0]
    first = s.cycle(refs)
    assert first["instances"][u]["mbm_local"] is not None
    write_assignment(group_path(r, u), "mbm_local_bytes:0=_")
    line = s.cycle(refs)
    # Unassigned: no data (never 0) and the reason; or, when this cycle was
    # the group's periodic re-read (staggered by its uuid), the release was
    # seen before the plan and the counter is ours again already (a new
    # count under a new key)
    if kernel_assignments(group_path(r, u))["mbm_local_bytes"][0]:
        assert u not in line["unmonitored"]
    else:
        assert line["instances"][u]["mbm_local"] is None
        assert "MBM counter" in line["unmonitored"].get(u, "")
    line = s.cycle(refs)  # within a cycle or two the free counter is ours again
    assert kernel_assignments(group_path(r, u))["mbm_local_bytes"][0]
    assert line["instances"][u]["mbm_local"] is not None
    s.cycle(refs)
    assert s.agent.proc.wait(timeout=30) == 0
