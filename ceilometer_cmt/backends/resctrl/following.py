"""Where an instance's threads are: following the guard's moves, the groups
that hold none of them, and the L3 allocation of those that do.

The guard (``ceilometer-cmt guard``) caps an instance by moving its threads
into its control group ``<prefix>cap-<share>`` and making our
``<prefix><uuid>`` monitor group there; on release it moves them back and
removes the cap group, our monitor group with it. The backend's per-cycle
listing shows both at once (:func:`follow`): a group of ours in a control
group the instance had none in is adopted (its tasks read), a group that went
with a cap group is let go: not "removed by others"; its MBM keys are not
seen again and the monitor keeps their counts (monotonic, the rate skipped
once); a later cap makes a group with new keys.

Idle groups.  Moving a task evicts none of its lines, it "only affects *new*
cache allocations" (resctrl.rst "Notes on cache occupancy";
doc/kernel-facts-cat.md), so an RMID without tasks keeps reporting the lines
still tagged with it until they are evicted (the kernel's limbo list holds "unused but
(potentially) dirty RMIDs" whose occupancy is above
``max_threshold_occupancy``, fs/resctrl/monitor.c; moving tasks to another
group "resets monitoring event counters and cache usage information",
commit 8da2b938eb7e "x86/resctrl: Implement rename op for mon groups"):
stale lines of threads that now fill under another RMID. Counting them
would count the move twice, and hide the cap's effect. So the instance's
occupancy is the sum over its groups that hold its threads
(:attr:`MonitoredInstance.idle` names the others, as of the last read of
their tasks); none holding any gives no occupancy (no data, never 0). An
idle group's MBM values are read while it holds counters (they stand still,
and a key that went and came back would be counted twice); in ``mbm_event``
mode the plan gives its counters to a group that waits for one, first the
group now holding the instance's threads (:mod:`assign`, rule 7).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ceilometer_cmt.backends.resctrl import fs
from ceilometer_cmt.backends.resctrl.monitored_instance import MonitoredInstance
from ceilometer_cmt.backends.resctrl.schemata import Allocations, cap_share
from ceilometer_cmt.readings import BackendCycle


def elsewhere(groups: fs.Groups, prefix: str) -> dict[str, list[str]]:
    """Our monitor group names -> the control groups other than the default
    one that hold one of that name (few: cap groups, ``<cachetune>`` ones)."""
    out: dict[str, list[str]] = {}
    for ctrl, names in groups.items():
        if ctrl:
            for n in names:
                if n.startswith(prefix):
                    out.setdefault(n, []).append(ctrl)
    return out


def members(t: MonitoredInstance) -> None:
    """Read the tasks of ``t``'s groups: its placed threads, and which groups
    hold none of them."""
    t.assigned, t.idle = set(), set()
    for ctrl, path in t.groups.items():
        tids = fs.read_tasks(path)
        t.assigned |= tids
        if not tids:
            t.idle.add(ctrl)


def let_go(t: MonitoredInstance, ctrls: list[str], forget: Callable[[str], None]) -> None:
    """Forget ``t``'s groups in ``ctrls`` that went with their cap group."""
    for ctrl in ctrls:
        forget(t.groups.pop(ctrl))
        t.generations[ctrl] = t.generations.get(ctrl, 0) + 1  # a later cap: new keys
        t.mbm_held.pop(ctrl, None)
        t.idle.discard(ctrl)


def left_with_cap_group(prefix: str, ctrls: list[str], groups: fs.Groups | None,
                        root: str) -> list[str]:
    """Those of ``ctrls`` that are cap groups and gone: not in ``groups`` (a
    listing), or not on the filesystem when None."""
    return [c for c in ctrls if cap_share(prefix, c) is not None
            and (c not in groups if groups is not None else not os.path.isdir(
                fs.ctrl_path(root, c)))]


def follow(t: MonitoredInstance, gone: list[str], groups: fs.Groups, present: set[str],
           found: dict[str, list[str]], root: str, prefix: str,
           forget: Callable[[str], None]) -> tuple[list[str], list[str], list[str]]:
    """Follow ``t``'s threads (see the module doc) from this cycle's listing
    (``groups``, the paths of our groups in it, and :func:`elsewhere`);
    ``gone``: its groups missing from the listing. Returns (adopted, let go,
    the rest of ``gone``: removed by someone else). When it adopted or let go
    of a group, the tasks of its groups were read again."""
    name = prefix + t.uuid
    new = [c for c in found.get(name, ()) if c not in t.groups]
    if "" not in t.groups and f"{fs.mon_groups_path(root, '')}/{name}" in present:
        new.append("")
    left = left_with_cap_group(prefix, gone, groups, root)
    if new or left:
        let_go(t, left, forget)
        for ctrl in new:
            t.groups[ctrl] = f"{fs.mon_groups_path(root, ctrl)}/{name}"
        members(t)
        t.settled = False  # its threads are listed this cycle
    return new, left, [c for c in gone if c not in left]


def allocation(t: MonitoredInstance, allocations: Allocations, caps: frozenset[str],
               cycle: BackendCycle) -> None:
    """``t``'s L3 allocation from the control groups holding its threads (all
    of its groups when none does) into ``cycle``, and count it in
    ``cycle.capped`` when one of them is a cap group (``caps``: those of this
    cycle's listing). Needs its reading."""
    ctrls = [c for c in t.groups if c not in t.idle] if t.idle else None
    ctrls = ctrls or list(t.groups)
    if caps and not caps.isdisjoint(ctrls):
        cycle.capped = (cycle.capped or 0) + 1
    if allocations.info is not None:
        alloc = allocations.share(ctrls, cycle.readings[t.uuid].occupancy)
        if alloc is not None:
            cycle.allocation[t.uuid] = alloc
