"""The resctrl state machine behind the simulator (no FUSE, no paths to
files in here).

It follows the kernel's ``fs/resctrl`` (rdtgroup.c, monitor.c,
ctrlmondata.c): errno values and ``info/last_cmd_status`` texts are the
kernel's own.  :class:`Model` holds the groups and runs the syscalls on them
(mkdir, rmdir, rename, writes), under one mutex, with help from:

* :mod:`.rmids` -- RMID/CLOSID allocation and limbo;
* :mod:`.tasks` -- which group each host task is in;
* :mod:`.writes` -- cpus, schemata, mode and threshold writes;
* :mod:`.counters` -- what the ``mon_data`` files read;
* :mod:`.assign`, :mod:`.bmec` -- MBM counter assignment and BMEC (the
  ``info/L3_MON`` files of Linux 6.18);
* :mod:`.telemetry` -- Intel AET's ``PERF_PKG`` counters (Linux 7.0).

Errors are :class:`.errors.SimError`; :mod:`.fs` turns them into errnos.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TypeVar

from ceilometer_cmt.simulator import counters, telemetry, writes
from ceilometer_cmt.simulator.assign import CounterAssign
from ceilometer_cmt.simulator.bmec import Bmec
from ceilometer_cmt.simulator.errors import SimError
from ceilometer_cmt.simulator.groups import Caller, Group, TaskEntry, rename_target
from ceilometer_cmt.simulator.layout import ROOT_NAMES, l3_name, lookup, pkg_name, sub_name
from ceilometer_cmt.simulator.rmids import IdPool
from ceilometer_cmt.simulator.scenario import Action, Fault, Scenario
from ceilometer_cmt.simulator.tasks import Membership
from ceilometer_cmt.simulator.timeline import ManualClock
from ceilometer_cmt.simulator.topology import Topology

_STATUS_MAX = 511  # the kernel's last_cmd_status buffer is 512 bytes
T = TypeVar("T")


class Model:
    """Everything behind the mount; every public method holds the mutex."""

    def __init__(
        self,
        topology: Topology,
        scenario: Scenario | None = None,
        proc_root: str = "/proc",
        clock: Callable[[], float] | None = None,
        scan_interval: float = 0.5,
    ) -> None:
        scenario = scenario or Scenario()
        self.topology = topology = scenario.host(topology)
        self.scenario = scenario
        self.proc_root = proc_root
        if clock is None:
            clock = ManualClock() if scenario.clock == "manual" else time.monotonic
        self.clock = clock
        self._t0 = clock()
        self._mutex = threading.RLock()
        self.faults: list[Fault] = list(scenario.faults)
        self._actions: list[Action] = list(scenario.actions)
        self._last = 0.0
        self.status = ""
        #: L3 ids whose CPUs are all offline: the kernel takes their
        #: mon_data/mon_L3_XX out of every group (open files answer ENODEV)
        self.offline_l3: set[int] = set()
        self.max_threshold_occupancy = topology.max_threshold_occupancy
        self.root = Group("", "ctrl", None, 0, 0, cpus=set(topology.cpus))
        self.root.schemata = {c.id: topology.cbm_mask for c in topology.l3}
        counters.zero_counters(self.root, topology)
        self.ctrl_groups: dict[str, Group] = {}
        self.ids = IdPool(topology, scenario.limbo_seconds)
        self.membership = Membership(proc_root, self.root, self._changed)
        #: tid -> entry (the same dict as ``membership.entries``)
        self.tasks: dict[int, TaskEntry] = self.membership.entries
        self.packages = telemetry.PackageMeter(topology)
        self.meter = counters.LoadMeter(scenario, self.membership, scan_interval, self.packages)
        self.assign = CounterAssign(topology, Bmec(topology), self._puts)
        self.assign.assign_on_mkdir(self.root)  # rdt_get_tree(), status cleared after
        self.status = ""
        self.value_reads: dict[str, int] = {}  # value file -> reads (mon_event_read()s)

    # ----------------------------------------------------------- plumbing
    def now(self) -> float:
        """Seconds since the simulator started (scenario time)."""
        return self.clock() - self._t0

    def locked(self) -> threading.RLock:
        return self._mutex

    @property
    def limbo_seconds(self) -> float:
        return self.ids.limbo_seconds

    def _puts(self, text: str) -> None:
        self.status = (self.status + text)[:_STATUS_MAX]

    def _report(self, error: SimError) -> SimError:
        """``error`` after its last_cmd_status line went to the status."""
        if error.status:
            self._puts(error.status)
        return error

    def groups(self) -> Iterator[Group]:
        for ctrl in (self.root, *self.ctrl_groups.values()):
            yield ctrl
            yield from ctrl.children.values()

    def group_at(self, parts: tuple[str, ...]) -> Group | None:
        """The group whose directory is ``parts`` (relative to the mount)."""
        if not parts:
            return self.root
        if len(parts) == 1:
            return self.ctrl_groups.get(parts[0])
        if len(parts) == 2 and parts[0] == "mon_groups":
            return self.root.children.get(parts[1])
        if len(parts) == 3 and parts[1] == "mon_groups":
            ctrl = self.ctrl_groups.get(parts[0])
            return ctrl.children.get(parts[2]) if ctrl else None
        return None

    # --------------------------------------------------------------- time
    def advance(self) -> None:
        """Bring counters, limbo and scheduled actions up to now."""
        with self._mutex:
            t = self.now()
            while self._actions and self._actions[0].at <= t:
                action = self._actions.pop(0)
                self.meter.integrate(
                    self.topology, self.offline_l3, self._last, max(self._last, action.at)
                )
                self._last = max(self._last, action.at)
                self.apply_action(action)
            self.meter.integrate(self.topology, self.offline_l3, self._last, t)
            self._last = max(self._last, t)
            self.ids.release(t)

    def _changed(self) -> None:
        """Membership changed: integrate up to now with the old membership,
        then look again at the host next time."""
        self.advance()
        self.meter.invalidate()

    # ------------------------------------------------------------ RMIDs
    def set_rmids(self, num_rmids: int) -> None:
        """Change info/L3_MON/num_rmids (RMIDs in use stay in use)."""
        with self._mutex:
            num_rmids = max(1, int(num_rmids))
            self.topology = replace(self.topology, num_rmids=num_rmids)
            self.ids.set_rmids(self.topology.rmid_limit, {g.rmid for g in self.groups()})

    def set_l3_online(self, l3_id: int, online: bool) -> None:
        """CPU hotplug of a whole L3 domain. While offline its MBM counters
        count nothing (no CPU runs there); back online they go on."""
        with self._mutex:
            if l3_id not in {c.id for c in self.topology.l3}:
                raise ValueError(f"no L3 domain {l3_id}")
            self.advance()
            if online:
                self.offline_l3.discard(l3_id)
            else:
                self.offline_l3.add(l3_id)

    def set_limbo(self, seconds: float) -> None:
        with self._mutex:
            self.ids.set_limbo(max(0.0, float(seconds)), self.now())

    # ----------------------------------------------------------- mkdir/rmdir
    def mkdir(self, parts: tuple[str, ...]) -> Group:
        with self._mutex:
            self.advance()
            name = parts[-1] if parts else ""
            if "\n" in name:
                raise SimError(errno.EINVAL)
            if parts and parts[0] == "info":
                raise SimError(errno.ENODEV)
            if self.group_at(parts) is not None or (len(parts) == 1 and name in ROOT_NAMES):
                raise SimError(errno.EEXIST)
            self.status = ""
            try:
                if len(parts) == 1:
                    group = self._mkdir_ctrl(name)
                elif (len(parts) == 2 and parts[0] == "mon_groups") or (
                    len(parts) == 3 and parts[0] in self.ctrl_groups and parts[1] == "mon_groups"
                ):
                    if name == "mon_groups":
                        raise SimError(errno.EPERM)
                    parent = self.root if len(parts) == 2 else self.ctrl_groups[parts[0]]
                    group = self._mkdir_mon(parent, name)
                else:
                    raise SimError(errno.EPERM)
            except SimError as e:
                raise self._report(e) from None
            self.assign.assign_on_mkdir(group)
            self._changed()
            return group

    def _mkdir_ctrl(self, name: str) -> Group:
        closid = self.ids.next_closid()
        rmid = self.ids.alloc_rmid(closid)
        try:
            schemata = writes.initial_schemata(self.topology, self._ctrls())
        except SimError:
            self.ids.give_back(rmid)
            raise
        self.ids.take_closid(closid)
        group = Group(name, "ctrl", None, closid, rmid, schemata=schemata)
        counters.zero_counters(group, self.topology)
        self.ctrl_groups[name] = group
        return group

    def _mkdir_mon(self, parent: Group, name: str) -> Group:
        rmid = self.ids.alloc_rmid(parent.closid)
        group = Group(name, "mon", parent, parent.closid, rmid)
        counters.zero_counters(group, self.topology)
        parent.children[name] = group
        return group

    def _not_a_group(self, parts: tuple[str, ...]) -> SimError:
        """rmdir/rename of a path that is no group: EPERM if the path
        exists (a file, info/, mon_data/...), ENOENT if not."""
        return SimError(errno.EPERM if lookup(self, parts) is not None else errno.ENOENT)

    def rmdir(self, parts: tuple[str, ...]) -> None:
        with self._mutex:
            self.advance()
            group = self.group_at(parts)
            if group is None:
                raise self._not_a_group(parts)
            if group.is_root:
                raise SimError(errno.EPERM)
            self._changed()
            self.membership.group_removed(group)
            now = self.now()
            for g in (group, *group.children.values()):
                self.assign.release(g)
            if group.kind == "mon":
                assert group.parent is not None
                group.parent.cpus |= group.cpus
                self.ids.free_rmid(group.rmid, now)
                del group.parent.children[group.name]
                group.deleted = True
                return
            self.root.cpus |= group.cpus
            self.ids.free_rmid(group.rmid, now)
            self.ids.free_closid(group.closid)
            for child in group.children.values():
                self.ids.free_rmid(child.rmid, now)
                child.deleted = True
            del self.ctrl_groups[group.name]
            group.deleted = True

    def rename(self, old: tuple[str, ...], new: tuple[str, ...]) -> None:
        with self._mutex:
            self.advance()
            group = self.group_at(old)
            if group is None:
                raise self._not_a_group(old)
            self.status = ""
            try:
                new_parent = rename_target(self.root, self.ctrl_groups, group, new)
            except SimError as e:
                raise self._report(e) from None
            self._changed()
            assert group.parent is not None
            del group.parent.children[group.name]
            group.parent, group.name, group.closid = new_parent, new[-1], new_parent.closid
            new_parent.children[group.name] = group
            self.membership.group_moved(group)

    # ------------------------------------------------------------ writes
    def command(self, fn: Callable[[], T], data: bytes | None = None, now: bool = True) -> T:
        """One read or write of a file whose kernel function clears
        last_cmd_status (a write of ``data`` without a trailing newline:
        EINVAL before that) and may append to it; ``now=False`` inside
        :meth:`advance` (a scheduled action)."""
        with self._mutex:
            if data is not None and not data.endswith(b"\n"):
                raise SimError(errno.EINVAL)
            if now:
                self.advance()
            self.status = ""
            try:
                return fn()
            except SimError as e:
                raise self._report(e) from None

    def write_tasks(self, group: Group, data: bytes, caller: Caller) -> None:
        self.command(lambda: self.membership.write(group, data, caller))

    def task_ids(self, group: Group) -> list[int]:
        """Tids in ``group``: a control group lists its monitor groups' too."""
        with self._mutex:
            return self.membership.ids(group)

    def write_cpus(self, group: Group, data: bytes, as_list: bool) -> None:
        with self._mutex:
            self.status = ""
            try:
                new = writes.parse_cpus(self.topology, data, as_list)
                self._changed()
                if group.kind == "mon":
                    writes.check_mon_cpus(group, new)
                else:
                    writes.check_ctrl_cpus(group, new)
            except SimError as e:
                raise self._report(e) from None
            writes.assign_cpus(group, new, self.root, list(self.ctrl_groups.values()))

    def _ctrls(self) -> list[Group]:
        return [self.root, *self.ctrl_groups.values()]

    def write_schemata(self, group: Group, data: bytes) -> None:
        """All or nothing; the masks bound occupancy at once (:mod:`.counters`)."""
        self.command(lambda: group.schemata.update(
            writes.parse_schemata(self.topology, group, data, self._ctrls())), data)

    def write_mode(self, group: Group, data: bytes) -> None:
        self.command(lambda: setattr(
            group, "mode", writes.parse_mode(self.topology, group, data, self._ctrls())), data)

    def write_max_threshold(self, data: bytes) -> None:
        with self._mutex:
            self.max_threshold_occupancy = writes.parse_max_threshold(self.topology, data)

    # ------------------------------------------------------------ values
    def read_event(self, group: Group, l3_id: int, sub_id: int | None, event: str) -> str:
        """The text of ``mon_data/mon_L3_XX[/mon_sub_L3_YY]/<event>``; ENODEV
        once the domain went offline (a removed kernfs file kept open)."""
        with self._mutex:
            if l3_id in self.offline_l3:
                raise SimError(errno.ENODEV)
            self._count_read(group, l3_name(l3_id), sub_id, event)
            self.advance()
            t = self.now()
            return self.meter.event_text(self.topology, self.faults, t, group, l3_id,
                                         sub_id, event, self.assign.word)

    def read_pkg_event(self, group: Group, pkg: int, event: str) -> str:
        """``mon_data/mon_PERF_PKG_XX/<event>``."""
        with self._mutex:
            self._count_read(group, pkg_name(pkg), None, event)
            self.advance()
            return self.packages.text(self.faults, self.now(), group, pkg, event)

    def _count_read(self, group: Group, dom: str, sub_id: int | None, event: str) -> None:
        p = f"{group.path}/mon_data/{dom}/{'' if sub_id is None else sub_name(sub_id) + '/'}{event}"
        self.value_reads[p.lstrip("/")] = self.value_reads.get(p.lstrip("/"), 0) + 1

    # ------------------------------------------------------ fault control
    def add_fault(self, fault: Fault) -> None:
        with self._mutex:
            if fault.start == 0.0:
                fault = replace(fault, start=self.now())
            self.faults.append(fault)

    def clear_faults(self) -> None:
        with self._mutex:
            self.faults.clear()

    def reset_counters(self, pattern: str = "*") -> int:
        """Zero the MBM counters of the groups whose path matches; how many."""
        with self._mutex:
            self.advance()
            return self._reset_counters(pattern)

    def _reset_counters(self, pattern: str) -> int:
        # No advance() here: apply_action runs inside advance().
        hit = 0
        for group in self.groups():
            if fnmatch.fnmatchcase(group.path, pattern):
                counters.zero_counters(group, self.topology)
                hit += 1
        return hit

    def apply_action(self, action: Action) -> None:
        with self._mutex:
            if action.action == "reset_counters":
                self._reset_counters(action.group)
            elif action.action == "set_rmids" and action.value is not None:
                self.set_rmids(int(action.value))
            elif action.action == "set_limbo" and action.value is not None:
                self.set_limbo(action.value)
            elif action.action in ("assign_mode", "event_filter", "bmec_config"):
                data, groups = (action.text + "\n").encode(), list(self.groups())
                with contextlib.suppress(SimError):  # the status tells
                    self.command(lambda: self.assign.write_action(
                        action.action, action.event, data, groups), data, now=False)

    def schedule(self, action: Action) -> None:
        with self._mutex:
            self._actions.append(action)
            self._actions.sort(key=lambda a: a.at)
            self.advance()

    def state(self) -> dict[str, object]:
        """A JSON-able summary for the control socket and tests."""
        with self._mutex:
            self.advance()
            return {
                "time": self.now(),
                "num_rmids": self.topology.num_rmids,
                "free_rmids": len(self.ids.free_rmids),
                "limbo_rmids": len(self.ids.limbo),
                "free_closids": len(self.ids.free_closids),
                "limbo_seconds": self.ids.limbo_seconds,
                "groups": {
                    g.path: {"rmid": g.rmid, "closid": g.closid} for g in self.groups()
                },
                "faults": len(self.faults),
                **self.assign.state(),
                "last_cmd_status": self.status or "ok\n",
            }
