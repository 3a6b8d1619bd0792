"""What the ``mon_data`` files read: loads attributed to groups, MBM
counters integrated over time, occupancy (bounded by each control group's
CAT ways, :func:`allocate`), and faults.

Values come from the scenario (see :mod:`.scenario`): each matched process's
load is shared by its threads (or put on its main thread) and counted in the
group each thread is in; the background load is the root group's.  A control
group's files show its own RMID plus its monitor groups' (errors dropped when
any read succeeds); with SNC the ``mon_L3_XX`` files sum the node files and
say ``Unavailable`` only when every node fails.  ``word`` says what an MBM
read shows instead of a number (``Unassigned`` without a counter in
``mbm_event`` mode, ``Unavailable`` once after a BMEC reset); the PERF_PKG
counts of :mod:`.telemetry` are integrated along with the MBM ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ceilometer_cmt.simulator import procfs
from ceilometer_cmt.simulator.groups import Group
from ceilometer_cmt.simulator.scenario import Fault, Scenario
from ceilometer_cmt.simulator.tasks import Membership
from ceilometer_cmt.simulator.telemetry import PackageMeter
from ceilometer_cmt.simulator.timeline import Timeline
from ceilometer_cmt.simulator.topology import MonDomain, Topology
from ceilometer_cmt.simulator.workload import ProcessMatcher

MBM_EVENTS = {"mbm_total_bytes": "mbm_total", "mbm_local_bytes": "mbm_local"}
_EPSILON = 1e-6
#: (group, event, domain) -> a word a read shows instead of the number, or None
Word = Callable[[Group, str, int], str | None]


def zero_counters(group: Group, topology: Topology) -> None:
    group.counters = {(ev, d.id): 0.0 for ev in MBM_EVENTS for d in topology.mon_domains}


class LoadMeter:
    """Who carries which load, cached for ``scan_interval`` wall seconds or
    until :meth:`invalidate` (membership changed)."""

    def __init__(
        self,
        scenario: Scenario,
        membership: Membership,
        scan_interval: float,
        packages: PackageMeter | None = None,
    ) -> None:
        self._packages = packages
        self._background = scenario.background
        self._membership = membership
        self._matcher = ProcessMatcher(scenario, membership.proc_root, scan_interval)
        self._scan_interval = scan_interval
        self._attribution: list[tuple[Group, float, Timeline]] | None = None
        self._attributed_at = 0.0

    def invalidate(self) -> None:
        self._attribution = None
        self._matcher.invalidate()

    def _attributions(self) -> list[tuple[Group, float, Timeline]]:
        wall = time.monotonic()
        if self._attribution is not None and wall - self._attributed_at < self._scan_interval:
            return self._attribution
        root = self._membership.root
        proc_root = self._membership.proc_root
        result: list[tuple[Group, float, Timeline]] = []
        for pid, load in self._matcher.matched().items():
            tids = procfs.threads_of(proc_root, pid)
            if not tids:
                continue
            shares = [(pid, 1.0)] if load.split == "main" else [(t, 1 / len(tids)) for t in tids]
            for tid, share in shares:
                entry = self._membership.of(tid)
                result.append((entry.group if entry else root, share, load.timeline))
        if self._background is not None:
            result.append((root, 1.0, self._background))
        self._attribution = result
        self._attributed_at = wall
        return result

    def integrate(self, topology: Topology, offline_l3: set[int], t0: float, t1: float) -> None:
        """Add each group's MBM bytes from ``t0`` to ``t1`` (scenario time)."""
        if t1 <= t0:
            return
        if self._packages is not None:
            self._packages.integrate(self._attributions(), t0, t1)
        for group, share, timeline in self._attributions():
            for dom in topology.mon_domains:
                if dom.l3_id in offline_l3:
                    continue
                for event, metric in MBM_EVENTS.items():
                    key = (event, dom.id)
                    if key in group.counters:
                        group.counters[key] += share * timeline.integral(metric, dom.id, t0, t1)

    def _occupancy(self, topology: Topology, t: float) -> dict[tuple[int, int], int]:
        """(id(group), domain) -> bytes, bounded by CAT and the domain, rounded."""
        raw: dict[tuple[int, int], float] = {}
        ctrl_of: dict[int, Group] = {}
        for group, share, timeline in self._attributions():
            ctrl_of[id(group)] = group if group.parent is None else group.parent
            for dom in topology.mon_domains:
                key = (id(group), dom.id)
                raw[key] = raw.get(key, 0.0) + share * timeline.value("occupancy", dom.id, t)
        gran = topology.occupancy_granularity
        result: dict[tuple[int, int], int] = {}
        for dom in topology.mon_domains:
            mine = {gid: v for (gid, d), v in raw.items() if d == dom.id}
            for gid, v in allocate(topology, dom, mine, ctrl_of).items():
                result[(gid, dom.id)] = int(v + _EPSILON) // gran * gran
        return result

    def event_text(
        self,
        topology: Topology,
        faults: list[Fault],
        t: float,
        group: Group,
        l3_id: int,
        sub_id: int | None,
        event: str,
        word: Word | None = None,
    ) -> str:
        """The text of ``mon_data/mon_L3_XX[/mon_sub_L3_YY]/<event>`` at ``t``."""
        occ = self._occupancy(topology, t)
        if sub_id is not None or not topology.snc:
            leaves = [sub_id if sub_id is not None else l3_id]
            summing = False
        else:
            leaves = [d.id for d in topology.domains_of(l3_id)]
            summing = True
        rmids = [group, *group.children.values()] if group.kind == "ctrl" else [group]
        values: list[int | str] = []
        for g in rmids:
            parts = [_rmid_value(faults, g, leaf, event, t, occ, word) for leaf in leaves]
            numbers = [p for p in parts if isinstance(p, int)]
            if summing:
                values.append(sum(numbers) if numbers else "Unavailable")
            else:
                values.append(parts[0])
        numbers = [v for v in values if isinstance(v, int)]
        result = sum(numbers) if numbers else values[0]
        return f"{result}\n"


def cbm_bytes(topology: Topology, dom: MonDomain, cbm: int) -> float:
    """The cache a CBM lets a control group fill in ``dom``: its share of
    the ways (``rdtgroup_cbm_to_size()``: size / cbm_len * popcount)."""
    return dom.size * bin(cbm & topology.cbm_mask).count("1") / topology.cbm_len


def allocate(
    topology: Topology, dom: MonDomain, demand: dict[int, float], ctrl_of: dict[int, Group]
) -> dict[int, float]:
    """What each RMID (``id(group)`` -> bytes it would hold) holds in
    ``dom`` once CAT and the cache size bound it, as hardware would do:

    1. the RMIDs of one control group together hold at most the ways of its
       CBM in this L3 (:func:`cbm_bytes`), shared in proportion to demand;
    2. everyone together holds at most the ways of the union of their CBMs
       (the whole cache while the default group keeps every way), shared in
       proportion again: groups whose masks overlap compete for those ways.

    So a noisy group moved into a control group with a quarter of the ways
    falls to about a quarter of the cache, and when the cache was full its
    neighbours get the room it left.  Lines are not evicted at once on real
    hardware ("only affects *new* cache allocations", resctrl.rst); here the
    bound applies from the next read.
    """
    out = dict(demand)
    ctrls: dict[int, Group] = {id(ctrl_of[g]): ctrl_of[g] for g in demand}
    union = 0
    for cid, ctrl in ctrls.items():
        cbm = ctrl.schemata.get(dom.l3_id, topology.cbm_mask)
        members = [g for g in demand if id(ctrl_of[g]) == cid]
        wanted = sum(demand[g] for g in members)
        if wanted > 0:
            union |= cbm
        bound = cbm_bytes(topology, dom, cbm)
        if wanted > bound:
            for g in members:
                out[g] = demand[g] * bound / wanted
    total = sum(out.values())
    room = cbm_bytes(topology, dom, union)
    if total > room:
        out = {g: v * room / total for g, v in out.items()}
    return out


def _rmid_value(
    faults: list[Fault],
    group: Group,
    domain: int,
    event: str,
    t: float,
    occ: dict[tuple[int, int], int],
    word: Word | None = None,
) -> int | str:
    """One RMID's value in one domain: a fault's word, ``word``'s, or the number."""
    for fault in faults:
        if fault.applies(group.path, domain, event, t):
            return fault.value
    if event == "llc_occupancy":
        return occ.get((id(group), domain), 0)
    said = word(group, event, domain) if word is not None else None
    if said is not None:
        return said
    # Shares of a load are fractions: absorb float error before flooring.
    return int(group.counters.get((event, domain), 0.0) + _EPSILON)
