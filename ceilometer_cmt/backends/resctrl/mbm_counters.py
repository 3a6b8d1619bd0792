"""The backend's MBM counters in ``mbm_event`` mode (Linux 6.18, AMD ABMC).

In that mode an MBM event of a group counts only in the L3 domains where a
counter is assigned to it, and reads ``Unassigned`` elsewhere
(doc/kernel-facts-mbm-assign-and-aet.md, 1.6 to 1.8). Each cycle
:class:`MbmCounters` reads the budget (``num_mbm_cntrs`` and
``available_mbm_cntrs``: two small files) and, only when something changed
(a group made or gone, an instance's CPU affinity, its priority, the free
counters), runs the policy of :mod:`assign` and writes its plan: every
release first, then every assignment, one line per ``write()``.

- **Where.** An instance's domains are the L3 domains of the CPUs its
  threads may run on (``Cpus_allowed_list`` of ``/proc/<pid>/task/<tid>/status``,
  read when its threads are listed), mapped through the host's cache
  topology (``shared_cpu_list`` of the L3 caches, :mod:`affinity`). Unknown:
  every domain.
- **What the kernel holds.** A group's ``mbm_L3_assignments`` is read when
  the group is first seen (the kernel may have assigned counters on mkdir,
  ``mbm_assign_on_mkdir``), after a refused write, and every RELIST-th cycle
  of its instance (someone else may have changed it); not every cycle. What
  the kernel gave a group we just made counts as free for the plan, so a new
  instance does not take the turn of older ones waiting (and keeps what the
  plan leaves it, without a reset); adopted groups keep what they hold.
- **Resets.** A new assignment restarts the hardware count
  (``rdtgroup_assign_cntr()``); writing ``e`` where a counter is assigned is
  a no-op (``rdtgroup_alloc_assign_cntr()``). So each newly assigned counter
  bumps that (control group, event, domain)'s generation and its values get
  a new key: the cumulative meter continues with an offset and the rate is
  skipped once (:mod:`ceilometer_cmt.counters`); a counter kept keeps its key.
- **Left out.** An instance's event without counters reads nothing (its
  bandwidth is None, never 0); the reason goes to the cycle's
  ``unmonitored`` while its occupancy is still read.
- **Idle groups.** A group holding none of the instance's threads
  (:attr:`MonitoredInstance.idle`) counts nothing: the plan gives it no
  counter and lets whoever waits take its counters, its instance's group
  now holding the threads first (:mod:`assign`, rule 7). Without counters
  it adds nothing (no None); with them its values still stand, under
  their keys. Taken and given again later, a counter restarts and gets a
  new key, so nothing is counted twice.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

from ceilometer_cmt.backends.resctrl import assign, assign_files, fs
from ceilometer_cmt.backends.resctrl.affinity import affinity_domains, cpu_domains
from ceilometer_cmt.backends.resctrl.monitored_instance import MonitoredInstance
from ceilometer_cmt.backends.resctrl.values import ValueReader
from ceilometer_cmt.errors import NotMonitored
from ceilometer_cmt.readings import (
    MBM_LOCAL_BYTES,
    MBM_TOTAL_BYTES,
    BackendCycle,
    HostCache,
    InstanceReading,
)

LOG = logging.getLogger(__name__)

class ConfigWatch:
    """The MBM counter configuration (:func:`assign_files.read_mbm_config`:
    the assign mode, each event's ``event_filter`` or BMEC masks), read
    every ``every`` cycles: writing any of it restarts the counters and
    changes what they count. :meth:`check` says when it changed; the caller
    then gives every MBM counter a new key (``%<changes>``)."""

    def __init__(self, root: str, every: int) -> None:
        self.root = root
        self.every = every
        self.config = assign_files.read_mbm_config(root)
        self.changes = 0

    @property
    def key_tag(self) -> str:
        return f"%{self.changes}" if self.changes else ""

    def check(self, cycle_no: int, now: bool = False) -> bool:
        """Read the configuration on every ``every``-th cycle (or ``now``);
        True when it differs from the last one read."""
        if not now and cycle_no % self.every:
            return False
        config = assign_files.read_mbm_config(self.root)
        if config == self.config:
            return False
        LOG.warning("resctrl MBM counter configuration changed from %s to %s (another "
                    "tool wrote event_filter, a BMEC config or the assign mode): the "
                    "counters restarted; bandwidth continues with an offset", self.config,
                    config)
        self.config = config
        self.changes += 1
        return True


class MbmCounters:
    """Assigns the host's MBM counters to our groups; one per backend."""

    def __init__(self, root: str, ops: fs.ResctrlOps, host: HostCache,
                 events: Sequence[str], relist: int) -> None:
        self.root = root
        self.ops = ops
        self.cpu_map = cpu_domains(host)
        self.events = tuple(e for e in fs.MBM_EVENTS if e in events)
        self.relist = relist
        #: the host is in mbm_event mode (as of the last :meth:`check_mode`)
        self.assigning = False
        #: the last budget read: counters per domain, free counters per domain
        self.num_cntrs: dict[int, int] | None = None
        self.available: dict[int, int] | None = None
        #: uuid -> why (part of) its MBM events have no counter
        self.missing: dict[str, str] = {}
        self._seen: tuple[object, ...] | None = None  # what the last plan saw
        #: counters per domain the writer keeps free for other tools (the
        #: privsep daemon's reserve), asked once per num_mbm_cntrs seen
        self._kept: dict[int, int] | None = None
        self._kept_for: dict[int, int] | None = None
        #: group path -> the MBM keys its value files were found with
        self._keys: dict[str, dict[str, dict[int, str]]] = {}
        #: for tests and the benchmark: assignment files read, lines written,
        #: counters newly assigned (resets), plans made
        self.file_reads = 0
        self.lines_written = 0
        self.resets = 0
        self.plans = 0

    def kept_free(self) -> dict[int, int]:
        """The counters per domain that writes leave free for other resctrl
        users: the plan counts them as taken, so it never asks for a counter
        the privsep daemon would refuse (a refusal costs the group's other
        lines of that write too)."""
        if self._kept is None or self._kept_for != self.num_cntrs:
            try:
                self._kept = self.ops.kept_free()
            except (OSError, NotMonitored) as e:  # NotMonitored: the daemon did not start
                LOG.warning("cannot ask which MBM counters are kept free for other "
                            "tools: %s; planning with all free counters", e)
                self._kept = {}
            self._kept_for = self.num_cntrs
        return self._kept

    def read_budget(self) -> bool:
        """Read ``num_mbm_cntrs`` and ``available_mbm_cntrs``; False when
        the host is not (or no longer) in ``mbm_event`` mode (EINVAL)."""
        self.num_cntrs = assign_files.read_num_mbm_cntrs(self.root)
        self.available = assign_files.read_available_mbm_cntrs(self.root)
        return self.available is not None

    def check_mode(self, tracked: Iterable[MonitoredInstance],
                   forget: Callable[[str], None]) -> bool:
        """Read the budget at the start of a cycle: is the host in mbm_event
        mode? On a change (and the first cycle) every assignment the kernel
        had is gone (``resctrl_mbm_assign_mode_write()``): the groups' files
        are read again and their values found again with the new mode's keys.
        True when the mode changed."""
        assigning = self.read_budget()
        if assigning == self.assigning:
            return False
        LOG.info("resctrl MBM counter assignment mode: %s",
                 "mbm_event" if assigning else "default")
        self.assigning = assigning
        for t in tracked:
            t.mbm_held.clear()
            for path in t.groups.values():
                forget(path)
        return True

    def domains_of(self, proc_root: str, pid: int, tids: Sequence[int]) -> frozenset[int] | None:
        return affinity_domains(proc_root, pid, tids, self.cpu_map)

    def learn(self, t: MonitoredInstance, ctrl: str, path: str,
              forget: Callable[[str], None]) -> bool:
        """Read what our group holds; a counter it did not hold before is a
        new assignment (its count restarted). True when anything changed."""
        self.file_reads += 1
        found = assign_files.read_assignments(path) or {}
        self._release_unread(path, found)
        now = {ev: frozenset(d for d, on in found.get(ev, {}).items() if on)
               for ev in self.events}
        now = {ev: d for ev, d in now.items() if d}
        before = t.mbm_held.get(ctrl)
        if before is not None:
            for ev, doms in now.items():
                self._bump(t, ctrl, ev, doms - before.get(ev, frozenset()))
        t.mbm_held[ctrl] = now
        if before != now:
            forget(path)
            return True
        return False

    def _release_unread(self, path: str, found: Mapping[str, Mapping[int, bool]]) -> None:
        """Give back our group's counters of an MBM event no polled meter needs
        (the kernel assigns every event at mkdir when ``mbm_assign_on_mkdir``
        is 1): nothing reads them, another group may."""
        lines = [assign_files.format_assignment(ev, {d: False for d, on in doms.items() if on})
                 for ev, doms in found.items()
                 if ev in fs.MBM_EVENTS and ev not in self.events and any(doms.values())]
        if lines:
            self.lines_written += len(lines)
            try:
                self.ops.write_assignments(path, lines)
            except OSError as e:  # they stay held, unread
                LOG.debug("%s: cannot release unread MBM counters: %s", path, e)

    def _bump(self, t: MonitoredInstance, ctrl: str, event: str, doms: frozenset[int]) -> None:
        for d in doms:
            key = (ctrl, event, d)
            t.mbm_gens[key] = t.mbm_gens.get(key, 0) + 1
            self.resets += 1

    def cycle(self, tracked: Sequence[MonitoredInstance], cycle_no: int,
              forget: Callable[[str], None], cycle: BackendCycle) -> None:
        """Learn new groups, re-read due ones, plan and apply when anything
        changed; the reason of each instance with an event left without
        counters goes to the cycle's ``unmonitored``, the budget to its
        ``mbm_counters*``. ``forget(path)``: the group's value files are to be
        found again (its counters or their keys changed)."""
        self._cycle(tracked, cycle_no, forget)
        for t in tracked:
            reason = self.missing.get(t.uuid)
            if reason is not None:
                cycle.unmonitored[t.uuid] = reason
        cycle.mbm_counters, cycle.mbm_counters_available = self.num_cntrs, self.available

    def _cycle(self, tracked: Sequence[MonitoredInstance], cycle_no: int,
               forget: Callable[[str], None]) -> None:
        changed = False
        fresh: set[str] = set()  # groups made by mkdir since the last cycle
        new = False
        for t in tracked:
            periodic = (cycle_no + t.stagger) % self.relist == 0
            for ctrl, path in t.groups.items():
                if ctrl not in t.mbm_held or periodic:
                    new |= ctrl not in t.mbm_held
                    changed |= self.learn(t, ctrl, path, forget)
            if t.made:
                fresh.update(t.groups[c] for c in t.made if c in t.groups)
                t.made.clear()
        if new:
            # a mkdir since the budget was read may have taken counters
            self.available = assign_files.read_available_mbm_cntrs(self.root)
        groups = tuple((p, t.mbm_domains, t.priority, c in t.idle) for t in tracked
                       for c, p in sorted(t.groups.items()))
        seen = (tuple(sorted(self.available.items())) if self.available else (), groups)
        if not changed and seen == self._seen:
            return
        if self._plan(tracked, forget, fresh):
            # what the kernel shows after our writes: the next plan runs only
            # when something else changes (a refused write is not retried
            # every cycle)
            self.available = assign_files.read_available_mbm_cntrs(self.root)
            seen = (tuple(sorted(self.available.items())) if self.available else (), groups)
        self._seen = seen

    def _plan(self, tracked: Sequence[MonitoredInstance], forget: Callable[[str], None],
              fresh: set[str]) -> bool:
        """Plan and apply. The counters the kernel gave a ``fresh`` group on
        mkdir (``mbm_assign_on_mkdir``) count as free for the plan: a new
        instance does not jump the queue of older ones waiting for a counter
        freed in the same cycle; it keeps those the plan gives it (no reset)
        and gives back the others. True when it wrote anything."""
        self.plans += 1
        groups = {path: (t, ctrl) for t in tracked for ctrl, path in t.groups.items()}
        self._keys = {p: k for p, k in self._keys.items() if p in groups}
        every = frozenset(self.cpu_map.values()) or frozenset(self.available or ())
        kept = self.kept_free()
        free = {d: max(0, n - kept.get(d, 0)) for d, n in (self.available or {}).items()}
        auto: dict[str, dict[str, frozenset[int]]] = {}
        for path in fresh & groups.keys():
            t, ctrl = groups[path]
            auto[path] = t.mbm_held.get(ctrl, {})
            for doms in auto[path].values():
                for d in doms & free.keys():
                    free[d] += 1
        plan = assign.plan(free, [
            assign.CounterClaim(path, t.mbm_domains or every,
                            {} if path in auto else t.mbm_held.get(ctrl, {}),
                            t.priority, float(t.since), ctrl in t.idle, t.uuid)
            for path, (t, ctrl) in groups.items()], self.events)
        releases, assigns = plan.release_lines(), plan.assign_lines()
        for path, had in auto.items():  # the plan saw them without counters
            after = plan.held.get(path, {})
            assigns.pop(path, None)
            for ev in self.events:
                gone = had.get(ev, frozenset()) - after.get(ev, frozenset())
                new = after.get(ev, frozenset()) - had.get(ev, frozenset())
                if gone:
                    releases.setdefault(path, []).append(
                        assign_files.format_assignment(ev, dict.fromkeys(gone, False)))
                if new:
                    assigns.setdefault(path, []).append(
                        assign_files.format_assignment(ev, dict.fromkeys(new, True)))
        wrote = False
        refused: dict[str, list[str]] = {}
        for lines_of in (releases, assigns):
            for path, lines in sorted(lines_of.items()):
                try:
                    failures = self.ops.write_assignments(path, lines)
                except OSError as e:
                    failures = [(line, e.errno or errno.EIO) for line in lines]
                self.lines_written += len(lines)
                wrote = True
                if failures:
                    refused.setdefault(path, []).extend(
                        f"{line.strip()}: {os.strerror(err)}" for line, err in failures)
        for path, (t, ctrl) in groups.items():
            if path in refused:
                LOG.warning("instance %s: MBM counter assignment refused: %s (%s)", t.uuid,
                            "; ".join(refused[path]), fs.last_cmd_status(self.root))
                self.learn(t, ctrl, path, forget)
                continue
            after = {ev: d for ev, d in plan.held.get(path, {}).items() if d}
            before = t.mbm_held.get(ctrl, {})
            if after != before:
                for ev, doms in after.items():
                    self._bump(t, ctrl, ev, doms - before.get(ev, frozenset()))
                t.mbm_held[ctrl] = after
                forget(path)
        self.missing = {}
        for path, (t, ctrl) in groups.items():
            reasons = list(plan.missing.get(path, {}).values())
            if path in refused:
                reasons.append("assignment refused: " + "; ".join(refused[path]))
            if reasons:
                where = f" (control group {ctrl})" if ctrl else ""
                prev = self.missing.get(t.uuid)
                text = "no MBM counter" + where + ": " + "; ".join(reasons)
                self.missing[t.uuid] = f"{prev}; {text}" if prev else text
        return wrote

    def read(self, values: ValueReader, t: MonitoredInstance, reading: InstanceReading,
             groups: Sequence[tuple[str, str]], forget: Callable[[str], None],
             unmonitored: dict[str, str]) -> None:
        """The values of ``t``'s groups: MBM values only where a counter is
        assigned, under keys that change with each new assignment; an event
        without a counter in each of the instance's domains is one None (no
        data, never 0, nor a partial sum that would understate it). A value
        reading ``Unassigned`` where we hold a counter (another tool released
        it): the group's file is read again now, the event reads None with
        the reason, and the next cycle plans again (taking it back if free).
        An idle group's events without counters add nothing."""
        slots = {MBM_TOTAL_BYTES: reading.mbm_total, MBM_LOCAL_BYTES: reading.mbm_local}
        want = t.mbm_domains or frozenset(self.cpu_map.values())
        for ctrl, path in groups:
            if ctrl not in t.mbm_held:  # made again during this read
                self.learn(t, ctrl, path, forget)
            keys = {ev: m for ev, m in t.mbm_keys(ctrl).items() if want <= m.keys()}
            if self._keys.get(path) != keys:  # the files to read changed
                forget(path)
                self._keys[path] = keys
            values.read(reading, path, ctrl, t.key_suffix(ctrl), keys)
            if path in values.unassigned:
                values.unassigned.discard(path)
                before = t.mbm_held.get(ctrl, {})
                self.learn(t, ctrl, path, forget)
                lost = [ev for ev in self.events if before.get(ev, frozenset())
                        - t.mbm_held[ctrl].get(ev, frozenset())]
                idle = ctrl in t.idle  # wants no counter: nothing is missing
                if lost:
                    self._seen = None  # plan again next cycle
                    for ev in lost:
                        slot = slots[ev]
                        for key in [k for k in slot if k.startswith(f"{ctrl}/")]:
                            del slot[key]
                        if not idle:
                            slot[f"{ctrl}/unassigned{t.key_suffix(ctrl)}"] = None
                if lost and not idle:
                    LOG.info("instance %s: MBM counters of %s released by another resctrl "
                             "user", t.uuid, ", ".join(lost))
                    reason = (f"no MBM counter: {', '.join(lost)}: released by another "
                              "resctrl user (assigned again when free)")
                    prev = unmonitored.get(t.uuid)
                    unmonitored[t.uuid] = f"{prev}; {reason}" if prev else reason
            for event in self.events:
                if not keys.get(event) and ctrl not in t.idle:
                    slots[event][f"{ctrl}/unassigned{t.key_suffix(ctrl)}"] = None


def start_cycle(mbm: MbmCounters | None, config: ConfigWatch, cycle_no: int,
                tracked: Collection[MonitoredInstance], values: ValueReader,
                forget: Callable[[str], None]) -> dict[str, str] | None:
    """The MBM part of a cycle's start: the mode and budget (ABMC hardware),
    then the counter configuration when due or the mode changed; when it
    changed, every MBM value gets a new key (the counters restarted).
    Returns the configuration for the samples' metadata."""
    switched = mbm is not None and mbm.check_mode(tracked, forget)
    if config.check(cycle_no, switched):
        values.key_tag = config.key_tag
        for path in [p for t in tracked for p in t.groups.values()]:
            forget(path)
    return config.config
