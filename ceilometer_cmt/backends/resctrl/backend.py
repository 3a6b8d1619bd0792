"""Per-instance monitor groups on resctrl: adopt, keep, read, remove; the cycle.

One monitor group ``<prefix><uuid>`` per instance and per control group that
holds the instance's threads (normally just the default group; libvirt
``<cachetune>`` puts vCPU threads in control groups of their own). Groups
without the prefix are never touched. The first cycle adopts our groups of
local instances and removes the rest; an instance that left takes its groups
with it; a group removed behind our back is made again with new counter keys.
New threads are placed by :mod:`placement`, values read by :mod:`values`;
on a host with Intel AET (``info/PERF_PKG_MON``) the telemetry of the same
groups by :mod:`telemetry`, into the cycle's ``telemetry``; on AMD ABMC
hardware in ``mbm_event`` mode the MBM counters of the groups are assigned
by :mod:`mbm_counters`, which also watches the counter configuration. Our
groups removed by another resctrl user are counted (``removed_by_others``),
with one WARNING per cycle that finds some.

The guard's caps and releases are followed at once, from the cycle's listing
(:mod:`following`): a group of ours it made under a cap group is adopted, one
that went with a cap group is let go (not "removed by others"); a group that
holds none of the instance's threads gives no occupancy. :mod:`schemata`
gives ``cache.allocation.percent`` from the schemata of the control groups
holding the threads, read again when the listing changed and every
RELIST-th cycle.

Steady state (no instance or thread appeared or left) costs the value reads
(``pread`` of files kept open), one ``poll()`` over the pidfds of all qemu
processes (process_watch) and one listing of the groups: no mkdir, no write,
no lock. That listing serves adoption, the check for our groups removed
behind our back and ``monitors_used``. Threads are listed again after a
change and every RELIST-th cycle.
"""

from __future__ import annotations

import logging
import resource
import zlib
from collections.abc import Callable, Collection, Sequence

from ceilometer_cmt.backends.resctrl import (
    assign_files,
    following,
    fs,
    our_groups,
    schemata,
    telemetry,
)
from ceilometer_cmt.backends.resctrl.mbm_counters import ConfigWatch, MbmCounters, start_cycle
from ceilometer_cmt.backends.resctrl.monitored_instance import MonitoredInstance
from ceilometer_cmt.backends.resctrl.placement import CyclePlacement
from ceilometer_cmt.backends.resctrl.values import GroupVanished, ValueReader
from ceilometer_cmt.errors import BackendUnavailable, InstanceGone, NotMonitored
from ceilometer_cmt.linux.process_watch import PidfdWatch
from ceilometer_cmt.linux.sysfs_cache import read_host_cache
from ceilometer_cmt.readings import (
    LLC_OCCUPANCY,
    BackendCycle,
    Decision,
    HostCache,
    InstanceReading,
    InstanceRef,
)

LOG = logging.getLogger(__name__)

#: With a pidfd, threads are listed again every RELIST cycles (threads that
#: qemu forks later join the group by themselves; this catches threads
#: another tool moved away).
RELIST = 10


class ResctrlBackend:
    name = "resctrl"

    def __init__(
        self,
        resctrl_root: str,
        *,
        sysfs_root: str = "/sys",
        proc_root: str = "/proc",
        pid_dir: str = "/run/libvirt/qemu",
        prefix: str = "ceilometer-",
        verify_mount: bool = True,
        ops: fs.ResctrlOps | None = None,
        warn: Callable[[str], None] | None = None,
        fd_budget: int | None = None,
        events: Collection[str] | None = None,
    ) -> None:
        if not fs.PREFIX_RE.fullmatch(prefix):
            raise BackendUnavailable(f"bad resctrl_group_prefix {prefix!r}")
        self.root = resctrl_root
        self.sysfs_root = sysfs_root
        self.proc_root = proc_root
        self.pid_dir = pid_dir
        self.prefix = prefix
        self.ops: fs.ResctrlOps = ops or fs.DirectOps()
        self._warn = warn or LOG.warning
        if verify_mount:
            fs.verify_mount(resctrl_root, proc_root)
        self.info = fs.read_info(resctrl_root)
        if LLC_OCCUPANCY not in self.info.mon_features:
            raise BackendUnavailable(
                f"{resctrl_root}/info/L3_MON/mon_features lacks {LLC_OCCUPANCY} "
                "(no cache monitoring on this CPU, or resctrl not mounted)")
        #: the L3 events read: those the polled meters need (``events``, see
        #: meters.Meter.events; None: all) that the host has
        self.events = tuple(e for e in self.info.mon_features if events is None or e in events)
        self._domains: list[tuple[int, str]] = fs.list_domains(resctrl_root)
        if fd_budget is None:
            # Value files kept open: half of what the process may open.
            fd_budget = resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 2
        self._tracked: dict[str, MonitoredInstance] = {}
        self._watch = PidfdWatch(proc_root)
        self._uuids: dict[str, str | None] = {}  # instance id -> validated uuid
        self._cycle_no = 0
        self._exited: set[int] = set()
        self._values = ValueReader(self._domains, self.events, fd_budget)
        #: Intel AET: the host's PERF_PKG_MON (None without), and the reader of
        #: its events when the host has one the meters need
        self.perf_pkg = telemetry.read_info(resctrl_root)
        self._telemetry: telemetry.TelemetryReader | None = None
        if (self.perf_pkg is not None and self.perf_pkg.packages
                and telemetry.wanted_events(self.perf_pkg, events)):
            self._telemetry = telemetry.TelemetryReader(self.perf_pkg, self._values, events)
        #: MBM counter assignment (AMD ABMC hardware; the mode is checked
        #: each cycle: ``available_mbm_cntrs`` reads only in ``mbm_event``)
        self.mbm: MbmCounters | None = None
        if (assign_files.read_num_mbm_cntrs(resctrl_root) is not None
                and any(e in self.info.mon_features for e in fs.MBM_EVENTS)):
            self.mbm = MbmCounters(resctrl_root, self.ops, self.host_cache(), self.events,
                                   RELIST)
        self.mbm_config = ConfigWatch(resctrl_root, RELIST)
        self._adopted = False
        self.allocations = schemata.Allocations(resctrl_root)
        self._last_groups: fs.Groups | None = None
        self._caps: frozenset[str] = frozenset()  # the guard's cap groups listed
        #: counters for tests and the benchmark
        self.mkdirs = 0
        self.rmdirs = 0
        self.writes = 0
        #: our groups removed by someone else (pqos -r ...), since the start
        self.removed_by_others = 0

    def auto_decision(self) -> Decision:
        """May ``auto`` take this backend? Always once it opened: the
        constructor already refused a tree without ``llc_occupancy``."""
        return Decision(self.name, True, f"{self.root} has {LLC_OCCUPANCY}")

    # ----------------------------------------------------------- host side
    def host_cache(self) -> HostCache:
        return read_host_cache(self.sysfs_root,
                               telemetry.group_limit(self.info.num_rmids, self.perf_pkg))

    def owned_groups(self, groups: fs.Groups | None = None) -> dict[str, list[str]]:
        """uuid (or raw name) -> paths of our groups, in ``groups`` (listed now if None)."""
        return our_groups.owned(self.root, self.prefix,
                                fs.list_groups(self.root) if groups is None else groups)

    def remove_groups(self, paths: Sequence[str]) -> list[str]:
        """rmdir our groups (under the root lock); returns the ones removed."""
        removed = our_groups.remove(self.root, self.prefix, self.ops, paths, self._warn)
        self.rmdirs += len(removed)
        return removed

    # ----------------------------------------------------------- the cycle
    def sync(self, instances: Sequence[InstanceRef]) -> BackendCycle:
        cycle = BackendCycle()
        wanted: dict[str, InstanceRef] = {}
        for ref in instances:
            uuid = self._uuids.get(ref.uuid, "")
            if uuid == "":
                uuid = self._uuids[ref.uuid] = our_groups.valid_uuid(ref.uuid)
                if len(self._uuids) > 4 * len(instances) + 1024:
                    self._uuids.clear()  # bounded: ids of long-gone instances
            if uuid is None:
                cycle.unmonitored[ref.uuid] = "instance id is not a UUID"
                continue
            wanted[uuid] = ref
        try:
            groups: fs.Groups | None = fs.list_groups(self.root)
        except OSError:
            groups = None
        if not self._adopted:
            swept = self._adopt(wanted, groups)
            if groups is not None:
                our_groups.unlist(self.root, groups, swept)
        gone = [u for u in self._tracked if u not in wanted]
        for u in gone:
            self._watch.unwatch(self._tracked[u].pidfd)
        if gone:
            paths = [p for u in gone for p in self._tracked.pop(u).groups.values()]
            for p in paths:
                self._forget(p)
            self.remove_groups(paths)
            if groups is not None:
                our_groups.unlist(self.root, groups, paths)
        if groups is None:
            used, present = None, None
        else:
            used = len(groups) + sum(map(len, groups.values()))
            present = set(fs.mon_group_paths(self.root, groups, self.prefix, True))
        placement = CyclePlacement(self.root, self.prefix, self.ops, self._warn)
        removed_before = self.removed_by_others
        self._cycle_no += 1
        self._exited = self._watch.exited()
        try:
            cycle.mbm_config = start_cycle(self.mbm, self.mbm_config, self._cycle_no,
                                           self._tracked.values(), self._values, self._forget)
            if groups is not None and (groups != self._last_groups
                                       or self._cycle_no % RELIST == 0):
                self.allocations.refresh()
                self._caps = frozenset(c for c in groups
                                       if c and schemata.cap_share(self.prefix, c) is not None)
            self._last_groups = groups
            ready = self._place(wanted, groups, present, placement, cycle)
            if self.mbm is not None and self.mbm.assigning:
                self.mbm.cycle(ready, self._cycle_no, self._forget, cycle)
            for tracked in ready:
                uuid = tracked.uuid
                try:
                    try:
                        cycle.readings[uuid] = self._read(tracked, cycle)
                    except GroupVanished as e:
                        removed = [c for c, p in tracked.groups.items() if p == e.path]
                        left = following.left_with_cap_group(self.prefix, removed, None,
                                                             self.root)
                        if left:  # released by the guard since the listing
                            LOG.info("instance %s: %s with its cap group", uuid, e)
                            following.let_go(tracked, left, self._forget)
                            following.members(tracked)
                        if len(left) < len(removed):
                            # Removed behind our back: recreate it (counters
                            # restart, the monitor carries the offset).
                            LOG.info("instance %s: %s; recreating it", uuid, e)
                            self.removed_by_others += len(removed) - len(left)
                            self._drop_groups(tracked, [c for c in removed if c not in left])
                            self._ensure(tracked, placement)
                        cycle.readings[uuid] = self._read(tracked, cycle)
                    following.allocation(tracked, self.allocations, self._caps, cycle)
                except (InstanceGone, NotMonitored, GroupVanished) as e:
                    cycle.unmonitored[uuid] = str(e)
                except OSError as e:
                    cycle.unmonitored[uuid] = f"resctrl error: {e}"
                    LOG.warning("instance %s: resctrl error: %s", uuid, e)
        finally:
            placement.close()
            self.mkdirs += placement.mkdirs
            self.writes += placement.writes
        cycle.monitors_used = None if used is None else used + placement.mkdirs
        if self.removed_by_others > removed_before:
            LOG.warning("%d of our resctrl monitor groups were removed by another resctrl "
                        "user (pqos -r, or a tool that resets resctrl?); recreated them, "
                        "%d since the start; cumulative meters continue with an offset",
                        self.removed_by_others - removed_before, self.removed_by_others)
        cycle.removed_by_others = self.removed_by_others
        return cycle

    def _place(self, wanted: dict[str, InstanceRef], groups: fs.Groups | None,
               present: set[str] | None, placement: CyclePlacement,
               cycle: BackendCycle) -> list[MonitoredInstance]:
        """Track, check and place every wanted instance; the ones to read."""
        ready = []
        cycle.capped = 0
        elsewhere = following.elsewhere(groups or {}, self.prefix)
        for uuid, ref in wanted.items():
            tracked = self._tracked.get(uuid)
            if tracked is None or tracked.domain_name != ref.domain_name:
                if tracked is not None:
                    self._watch.unwatch(tracked.pidfd)
                old = tracked
                tracked = self._tracked[uuid] = MonitoredInstance(
                    uuid, ref.domain_name, stagger=zlib.crc32(uuid.encode()) % RELIST,
                    since=self._cycle_no)
                if old is not None:
                    # the groups stay, and so do their counters and keys
                    tracked.groups, tracked.generations = old.groups, old.generations
                    tracked.mbm_held, tracked.mbm_gens = old.mbm_held, old.mbm_gens
                    tracked.since = old.since
            tracked.priority = ref.mbm_priority
            gone = [] if present is None else [
                c for c, p in tracked.groups.items() if p not in present]
            if groups is not None and present is not None and (
                    gone or "" not in tracked.groups or self.prefix + uuid in elsewhere):
                new, left, gone = following.follow(tracked, gone, groups, present, elsewhere,
                                                   self.root, self.prefix, self._forget)
                if new or left:
                    LOG.info("instance %s: its threads moved: monitor group(s) adopted in "
                             "%s, let go with the cap group in %s", uuid, new, left)
            if gone:
                # Removed behind our back (open files may still answer):
                # recreate; counters restart, the monitor carries the offset.
                LOG.info("instance %s: monitor group removed by someone else; "
                         "recreating it", uuid)
                self.removed_by_others += len(gone)
                self._drop_groups(tracked, gone)
            try:
                if not self._steady(tracked):
                    self._ensure(tracked, placement)
                ready.append(tracked)
            except (InstanceGone, NotMonitored, GroupVanished) as e:
                cycle.unmonitored[uuid] = str(e)
            except OSError as e:
                cycle.unmonitored[uuid] = f"resctrl error: {e}"
                LOG.warning("instance %s: resctrl error: %s", uuid, e)
        return ready

    def _drop_groups(self, t: MonitoredInstance, ctrls: list[str]) -> None:
        """Forget our vanished groups in ``ctrls``; they are made again with new
        counter keys. The other groups keep their files and keys: a counter that
        did not restart must not be counted twice."""
        for ctrl in ctrls:
            self._forget(t.groups.pop(ctrl))
            t.generations[ctrl] = t.generations.get(ctrl, 0) + 1
            t.mbm_held.pop(ctrl, None)  # a new group: its file is read again
        t.assigned.clear()
        t.settled = False

    def close(self) -> None:
        """Groups stay for the next agent to adopt; pidfds and files are closed."""
        self._watch.close()
        if self._telemetry is not None:
            self._telemetry.close()
        self._values.close()
        self._tracked.clear()
        self._adopted = False

    # ----------------------------------------------------------- internals
    def _adopt(self, wanted: dict[str, InstanceRef],
               groups: fs.Groups | None) -> list[str]:
        """First cycle: take over our groups of local instances, sweep the rest
        (returns the groups it tried to remove). ``groups``: this cycle's listing."""
        tracked, orphans = our_groups.adopt(
            self.root, self.prefix, self.owned_groups(groups),
            {u: ref.domain_name for u, ref in wanted.items()})
        self._tracked.update(tracked)
        if orphans:
            removed = self.remove_groups(orphans)
            LOG.info("removed %d stale resctrl groups with prefix %r", len(removed),
                     self.prefix)
        self._adopted = True
        return orphans

    def _steady(self, t: MonitoredInstance) -> bool:
        """Nothing to check this cycle: the pidfd says the very process lives,
        the last thread listing found nothing new, not its re-listing cycle."""
        return bool(t.settled and t.pidfd is not None and t.groups
                    and t.pidfd not in self._exited
                    and (self._cycle_no + t.stagger) % RELIST)

    def _ensure(self, t: MonitoredInstance, placement: CyclePlacement) -> None:
        # the re-listing cycle of a settled instance (without a pidfd, _ensure
        # runs every cycle: the tasks files are still read only then)
        periodic = t.settled and (self._cycle_no + t.stagger) % RELIST == 0
        tids = t.resolve(self.proc_root, self.pid_dir, self._watch, self._exited)
        if periodic and t.groups:
            # A periodic check: trust the kernel's lists, not our memory, so a
            # thread another tool moved out is written back.
            following.members(t)
        live = set(tids)
        t.assigned &= live
        t.foreign &= live
        new = [tid for tid in tids if tid not in t.assigned and tid not in t.foreign]
        if (self.mbm is not None and self.mbm.assigning and t.pid is not None
                and (new or periodic or not t.settled)):
            # where its threads may run: on the cycles that list its threads
            t.mbm_domains = self.mbm.domains_of(self.proc_root, t.pid, tids)
        t.settled = not new
        if not new and t.groups:
            return
        placement.place(t, new)

    def _forget(self, path: str) -> None:
        self._values.forget(path)
        if self._telemetry is not None:
            self._telemetry.forget(path)

    def _read(self, t: MonitoredInstance, cycle: BackendCycle) -> InstanceReading:
        reading = InstanceReading({}, {}, {})
        groups = sorted(t.groups.items())
        # an idle group's occupancy goes to a scratch dict (see the module doc)
        parts = [(reading, [g for g in groups if g[0] not in t.idle])]
        if t.idle:
            parts.append((InstanceReading({}, reading.mbm_total, reading.mbm_local),
                          [g for g in groups if g[0] in t.idle]))
        for into, some in parts:
            if self.mbm is not None and self.mbm.assigning:
                self.mbm.read(self._values, t, into, some, self._forget, cycle.unmonitored)
            else:
                for ctrl, path in some:
                    self._values.read(into, path, ctrl, t.key_suffix(ctrl))
        if self._telemetry is not None:
            # after every L3 read: a vanished group raised there already
            tele: dict[str, dict[str, int | None]] = {}
            for ctrl, path in groups:
                self._telemetry.read(tele, path, ctrl, t.key_suffix(ctrl))
            cycle.telemetry[t.uuid] = tele
        return reading
