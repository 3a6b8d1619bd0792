"""Which instance gets the MBM counters: a pure policy (no I/O).

In ``mbm_event`` mode (Linux 6.18, AMD ABMC) an MBM event of a monitor group
counts only in the L3 domains where a hardware counter is assigned to it;
elsewhere it reads ``Unassigned`` (``__l3_mon_event_count()`` sets -ENOENT,
``rdtgroup_mondata_show()``, fs/resctrl/monitor.c). A domain has few
counters (``num_mbm_cntrs``, 32 on current EPYC: ``CPUID 0x80000020``
subleaf 5, ``rdt_get_l3_mon_config()``, arch/x86/kernel/cpu/resctrl/monitor.c),
and a new assignment restarts its count (``rdtgroup_assign_cntr()`` resets
the hardware counter, "cfg_en == 1", and the group's ``mbm_state``). Given
the free counters per domain (``available_mbm_cntrs``) and the instances,
:func:`plan` says which (instance, event, domain) to assign and to release.

The rules, in the order they apply:

1. **Only where the instance may run.** An instance's counters for an event
   are wanted in exactly the L3 domains its threads may run in (from their
   CPU affinity). A counter held in any other domain, or for an event not
   wanted, is released: it counts nothing this instance does.
2. **All domains or none.** An (instance, event) is monitored only when it
   has a counter in each of its domains: a sum over part of them would
   understate the traffic (the meters skip such a sum). One that cannot get
   them all releases the ones it holds, for others to use.
3. **mbm_total_bytes before mbm_local_bytes** (the kernel's own order in
   ``rdtgroup_assign_cntrs()``): every instance's total is placed before any
   instance's local, and a local never takes a counter from a total.
4. **Holders keep their counters.** A counter an instance holds is never
   taken for an instance of equal or lower priority, so assignments do not
   flap from cycle to cycle (and counts are not restarted for nothing).
5. **Higher priority first, then the oldest.** Instances are served by
   priority (``cmt:mbm_priority`` in the instance's metadata, an int,
   default 0; see :func:`priority_of`), highest first, then by age (``since``,
   smallest first), then by uuid. An instance of strictly higher priority
   may take the counters of lower-priority holders (of the same or a later
   event), the lowest priority and then the youngest first; the holder loses
   that event in all its domains (rule 2).
6. **A reason for each instance left out** (for the
   ``cache.instances.unmonitored`` metadata): which event, which domains.
7. **Idle groups are spare.** A group holding none of the instance's
   threads (``idle``: the guard moved them to a cap group,
   :mod:`following`) counts nothing: it is never given a counter, needs no
   reason, and what it holds (all its domains of an event, else released
   by rule 2) is taken, before any other holder and whatever the
   priorities, by whoever lacks a counter and finds no free one; first by
   a group of the same ``owner`` (the group now holding the threads: the
   counters follow them), which others leave it while it lacks that
   event's counters. Kept
   while nobody needs it: a group whose threads come back finds its
   counters still assigned (no reset, no churn when the guard caps and
   releases); one whose counters were taken gets new ones like any other,
   a new assignment and so a new count (doc/kernel-facts-mbm-assign-and-aet.md
   1.8: ``rdtgroup_assign_cntr()`` resets it; its values get a new key).

Apply a :class:`CounterPlan` by writing every release first (they free the
counters), then every assignment: :meth:`CounterPlan.release_lines` and
:meth:`CounterPlan.assign_lines` give the ``mbm_L3_assignments`` lines per instance
(:func:`~ceilometer_cmt.backends.resctrl.assign_files.format_assignment`). The
kernel's ``available_mbm_cntrs`` already excludes every counter held, ours
and other tools'; groups of other tools are never in the input, so never
touched.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ceilometer_cmt.backends.resctrl.assign_files import format_assignment
from ceilometer_cmt.backends.resctrl.fs import MBM_EVENTS

#: the instance metadata key of an instance's priority for MBM counters
PRIORITY_KEY = "cmt:mbm_priority"


def priority_of(metadata: Mapping[str, object] | None) -> int:
    """``cmt:mbm_priority`` from an instance's metadata: an int (Nova
    metadata values are strings: ``"10"``, ``"-1"``); 0 when absent or not an int."""
    value = (metadata or {}).get(PRIORITY_KEY)
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        body = text[1:] if text[:1] in "+-" else text
        if body.isascii() and body.isdigit() and len(body) <= 9:
            return int(text)
    return 0


@dataclass(frozen=True)
class CounterClaim:
    """One monitor group's claim on MBM counters, as the policy sees it: the
    instance it serves, where its threads run, what it holds, its rank."""

    uuid: str
    #: the L3 domains its threads may run in (from their CPU affinity)
    domains: frozenset[int]
    #: event -> the domains it holds a counter in now (``mbm_L3_assignments``)
    held: Mapping[str, frozenset[int]] = field(default_factory=dict)
    priority: int = 0
    #: when it started (or was first seen): the smaller, the older
    since: float = 0.0
    #: holds none of the instance's threads (rule 7): wants no counter
    idle: bool = False
    #: the instance whose group this is (rule 7; "": ``uuid``)
    owner: str = ""


@dataclass(frozen=True)
class Change:
    uuid: str
    event: str
    domain: int


@dataclass(frozen=True)
class CounterPlan:
    """What :func:`plan` decides: the counters to assign and release, and
    what each claim holds or lacks once they are applied."""

    assign: tuple[Change, ...]
    release: tuple[Change, ...]
    #: uuid -> event -> the domains it holds a counter in once the plan is applied
    held: dict[str, dict[str, frozenset[int]]]
    #: uuid -> event -> why it has no counters for that event
    missing: dict[str, dict[str, str]]

    @property
    def unmonitored(self) -> dict[str, str]:
        """uuid -> reason, for instances left without any MBM counter."""
        return {u: "; ".join(ev_reasons.values()) for u, ev_reasons in self.missing.items()
                if not any(self.held.get(u, {}).values())}

    def _lines(self, changes: Iterable[Change], on: bool) -> dict[str, list[str]]:
        by: dict[str, dict[str, dict[int, bool]]] = {}
        for c in changes:
            by.setdefault(c.uuid, {}).setdefault(c.event, {})[c.domain] = on
        return {u: [format_assignment(ev, states[ev]) for ev in MBM_EVENTS if ev in states]
                for u, states in by.items()}

    def release_lines(self) -> dict[str, list[str]]:
        """uuid -> ``mbm_L3_assignments`` lines that free counters: write them first."""
        return self._lines(self.release, False)

    def assign_lines(self) -> dict[str, list[str]]:
        """uuid -> lines that assign counters: write them after every release."""
        return self._lines(self.assign, True)


def _order(inst: CounterClaim) -> tuple[int, float, str]:
    return (-inst.priority, inst.since, inst.uuid)


#: uuid -> event -> the domains it holds a counter in
Held = dict[str, dict[str, frozenset[int]]]
#: rounds of :func:`_round` before :func:`plan` settles (a partial hold freed
#: late in one round can serve an earlier instance in the next); it settles in
#: two or three in practice
MAX_ROUNDS = 8


def plan(available: Mapping[int, int], instances: Iterable[CounterClaim],
         events: Iterable[str] = MBM_EVENTS) -> CounterPlan:
    """Decide the assignments (see the module's rules). ``available``: free
    counters per domain as the kernel shows them (held ones not counted);
    ``events``: the wanted MBM events, in the order they are served.

    The rules run in rounds on the state the previous round leaves, until a
    round changes nothing; the plan is the difference between the first and
    the last state, so a counter is never released and assigned again within
    one plan (which would restart its count)."""
    wanted = [e for e in MBM_EVENTS if e in set(events)]  # total before local
    insts = sorted(instances, key=_order)
    start = {i.uuid: {e: frozenset(d) for e, d in i.held.items() if d} for i in insts}
    free = {d: max(0, n) for d, n in available.items()}
    state: Held = start
    missing: dict[str, dict[str, str]] = {}
    taken: dict[str, dict[str, str]] = {}  # why a holder lost its counters
    for _ in range(MAX_ROUNDS):
        new, free, missing = _round(free, insts, state, wanted)
        for u, reasons in missing.items():
            for e, why in reasons.items():
                if e in start.get(u, {}) and e not in new.get(u, {}) and e in state.get(u, {}):
                    taken.setdefault(u, {}).setdefault(e, why)
        if new == state:
            break
        state = new
    for u, reasons in missing.items():  # a later round sees only "no free counter"
        for e in reasons:
            if e in taken.get(u, {}):
                reasons[e] = taken[u][e]
    assign: list[Change] = []
    release: list[Change] = []
    for i in insts:
        for e in sorted(set(start[i.uuid]) | set(state[i.uuid]), key=_event_order):
            before, after = start[i.uuid].get(e, frozenset()), state[i.uuid].get(e, frozenset())
            release.extend(Change(i.uuid, e, d) for d in sorted(before - after))
            assign.extend(Change(i.uuid, e, d) for d in sorted(after - before))
    assign.sort(key=lambda c: _event_order(c.event))  # every total before any local
    return CounterPlan(tuple(assign), tuple(release), state, missing)


def _owner(inst: CounterClaim) -> str:
    return inst.owner or inst.uuid


def _event_order(event: str) -> tuple[int, str]:
    return (MBM_EVENTS.index(event) if event in MBM_EVENTS else len(MBM_EVENTS), event)


def _round(available: Mapping[int, int], insts: list[CounterClaim], state: Held,
           wanted: list[str]) -> tuple[Held, dict[int, int], dict[str, dict[str, str]]]:
    """One pass of the rules over ``state`` (uuid -> event -> domains held):
    the state after it, the free counters then, and the reasons."""
    rank = {e: i for i, e in enumerate(wanted)}
    free = dict(available)
    # what each (instance, event) holds where it is wanted; the rest goes now (rule 1)
    keep: dict[tuple[str, str], set[int]] = {}
    by_uuid = {i.uuid: i for i in insts}
    busy: dict[str, list[CounterClaim]] = {}  # owner -> its groups holding threads
    for i in insts:
        if not i.idle:
            busy.setdefault(_owner(i), []).append(i)
    for inst in insts:
        for event, doms in state[inst.uuid].items():
            useful = doms & inst.domains if event in rank else frozenset()
            if inst.idle and useful != inst.domains:
                useful = frozenset()  # rule 7: a partial spare counts nothing
            for d in doms - useful:
                if d in free:
                    free[d] += 1
            if useful:
                keep[(inst.uuid, event)] = set(useful)
    done: set[tuple[str, str]] = set()
    missing: dict[str, dict[str, str]] = {}

    def drop(unit: tuple[str, str]) -> None:
        for d in keep.pop(unit, set()):
            if d in free:
                free[d] += 1

    for event in wanted:
        for inst in insts:
            if inst.idle:
                continue  # rule 7: never served
            unit = (inst.uuid, event)
            have = keep.get(unit, set())
            need = sorted(inst.domains - have)
            short = [d for d in need if free.get(d, 0) < 1]
            unknown = [d for d in short if d not in free]
            victims = [] if unknown else _victims(inst, event, short, keep, done, by_uuid,
                                                  rank, free, busy)
            if not inst.domains or (short and (unknown or victims is None)):
                if not inst.domains:
                    why = "no L3 domain known for its CPUs"
                elif unknown:
                    why = f"L3 domain(s) {unknown} have no MBM counters"
                else:
                    why = (f"no free MBM counter in L3 domain(s) {short} (held by instances "
                           "of equal or higher priority, or by other tools)")
                # (a holder that just lost them to a higher priority keeps that reason)
                missing.setdefault(inst.uuid, {}).setdefault(event, f"{event}: {why}")
                drop(unit)
                continue
            for v in victims or []:
                drop(v)
                if not by_uuid[v[0]].idle:
                    missing.setdefault(v[0], {})[v[1]] = (
                        f"{v[1]}: its counters went to instance {inst.uuid} of higher "
                        "priority")
            for d in need:
                free[d] -= 1
            keep[unit] = set(inst.domains)
            done.add(unit)
            if inst.uuid in missing:  # it lost them to a higher priority, then found others
                missing[inst.uuid].pop(event, None)
                if not missing[inst.uuid]:
                    del missing[inst.uuid]
    held = {i.uuid: {e: frozenset(keep[(i.uuid, e)]) for e in wanted
                     if keep.get((i.uuid, e))} for i in insts}
    return held, free, missing


def _victims(inst: CounterClaim, event: str, short: list[int],
             keep: dict[tuple[str, str], set[int]], done: set[tuple[str, str]],
             by_uuid: dict[str, CounterClaim], rank: dict[str, int],
             free: dict[int, int], busy: dict[str, list[CounterClaim]]
             ) -> list[tuple[str, str]] | None:
    """The holdings whose release gives ``inst`` a counter in each domain of
    ``short``, or None: those of idle groups (rule 7) first (its owner's,
    then of ``event``; ``busy``: owner -> its groups holding threads), then holdings
    of strictly lower priority, of ``event`` or a later one, not yet
    confirmed this round; the lowest priority, then the youngest, then a
    later event first."""
    if not short:
        return []
    owner = _owner

    def spare(u: tuple[str, str]) -> bool:  # rule 7: an idle holding ``inst`` may take
        mine = owner(by_uuid[u[0]])
        # not while a group of its owner holding threads lacks that event's counters
        return mine == owner(inst) or all(
            s.domains <= keep.get((s.uuid, u[1]), set()) for s in busy.get(mine, ()))

    pool = sorted(
        (u for u in keep if (by_uuid[u[0]].idle and spare(u)) or (
            not by_uuid[u[0]].idle and u not in done and rank[u[1]] >= rank[event]
            and by_uuid[u[0]].priority < inst.priority)),
        key=lambda u: (not by_uuid[u[0]].idle, owner(by_uuid[u[0]]) != owner(inst),
                       by_uuid[u[0]].idle and u[1] != event,  # an idle's same event
                       by_uuid[u[0]].priority, -by_uuid[u[0]].since, -rank[u[1]], u[0]))
    chosen: list[tuple[str, str]] = []
    got = {d: free.get(d, 0) for d in short}
    for d in short:
        if got[d] >= 1:
            continue
        victim = next((u for u in pool if u not in chosen and d in keep[u]), None)
        if victim is None:
            return None
        chosen.append(victim)
        for vd in keep[victim]:
            if vd in got:
                got[vd] += 1
    return chosen
