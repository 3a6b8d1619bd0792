"""The resctrl state machine behind the simulator (no FUSE in here).

It follows the kernel's ``fs/resctrl`` (rdtgroup.c, monitor.c,
ctrlmondata.c): errno values and ``info/last_cmd_status`` texts are the
kernel's own.

* Groups: the root (CLOSID 0, RMID 0), control groups made at the root
  (a CLOSID and an RMID each) and monitor groups in any control group's
  ``mon_groups`` (an RMID each).  RMIDs come from a free list in LRU order;
  ``rmdir`` puts an RMID in limbo for ``limbo_seconds``; with the free list
  empty, ``mkdir`` fails with EBUSY while RMIDs sit in limbo, ENOSPC
  otherwise ("Out of RMIDs").  No CLOSID left: ENOSPC ("Out of CLOSIDs").
* Tasks: every host task is in one control group and at most one monitor
  group of it.  A task is known by tid *and* start time, so an exited task
  vanishes from listings and a reused tid is a new task (in the root group).
  Inheritance: a thread started after its main thread was assigned, or a
  process forked after its parent's main thread was assigned, joins that
  group (the kernel copies the group at fork; the simulator sees the result
  when it next looks at those tasks).  Start times have a clock-tick (10 ms)
  resolution; a task started in the assignment's tick counts as older, so
  the simulator never lets a plugin off for a thread it did not write.
* Values: see :mod:`ceilometer_cmt.simulator.scenario`.  A control group's
  files show its own RMID plus its monitor groups' (errors dropped when any
  read succeeds); with SNC the ``mon_L3_XX`` files sum the node files and say
  ``Unavailable`` only when every node fails.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from ceilometer_cmt.simulator import host
from ceilometer_cmt.simulator.scenario import Action, Fault, Scenario, Timeline
from ceilometer_cmt.simulator.topology import Topology
from ceilometer_cmt.simulator.workload import ProcessMatcher

MBM_EVENTS = {"mbm_total_bytes": "mbm_total", "mbm_local_bytes": "mbm_local"}
_STATUS_MAX = 511  # the kernel's last_cmd_status buffer is 512 bytes
_EPSILON = 1e-6


class SimError(Exception):
    """An errno for the syscall; the message already went to last_cmd_status."""

    def __init__(self, err: int) -> None:
        super().__init__(err, os.strerror(err))
        self.errno = err


class ManualClock:
    """A clock that moves only when told (``clock: manual`` scenarios)."""

    def __init__(self) -> None:
        self._t = 0.0

    def __call__(self) -> float:
        return self._t

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time does not go back")
        self._t += seconds


@dataclass(eq=False)
class Group:
    name: str
    kind: str  # "ctrl" or "mon"
    parent: Group | None  # a monitor group's control group
    closid: int
    rmid: int
    cpus: set[int] = field(default_factory=set)
    mode: str = "shareable"
    schemata: dict[int, int] = field(default_factory=dict)  # L3 id -> CBM
    children: dict[str, Group] = field(default_factory=dict)
    counters: dict[tuple[str, int], float] = field(default_factory=dict)
    deleted: bool = False

    @property
    def path(self) -> str:
        """Relative to the mount: "", "c1", "mon_groups/m", "c1/mon_groups/m"."""
        if self.kind == "ctrl":
            return self.name
        assert self.parent is not None
        prefix = f"{self.parent.name}/" if self.parent.name else ""
        return f"{prefix}mon_groups/{self.name}"

    @property
    def is_root(self) -> bool:
        return self.kind == "ctrl" and self.name == ""


@dataclass
class TaskEntry:
    ctrl: Group
    mon: Group | None
    start: int  # clock ticks since boot: identifies the task with its tid
    since: int  # when it got here (same unit), for inheritance
    tgid: int

    @property
    def group(self) -> Group:
        return self.mon or self.ctrl


@dataclass(frozen=True)
class Caller:
    uid: int = 0
    pid: int = 0


_KSTRTOINT = re.compile(r"^[+-]?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$")


def kstrtoint(text: str) -> int | None:
    """The kernel's ``kstrtoint(s, 0, &v)``: base prefixes, int range."""
    if not _KSTRTOINT.match(text):
        return None
    value = int(text, 0) if not re.match(r"^[+-]?0[0-7]+$", text) else int(text, 8)
    if not -(2**31) <= value < 2**31:
        return None
    return value


def parse_cpu_list(text: str) -> set[int] | None:
    text = text.strip()
    cpus: set[int] = set()
    if not text:
        return cpus
    for part in text.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+)(?::(\d+)/(\d+))?)?", part.strip())
        if not m:
            return None
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) else lo
        if hi < lo:
            return None
        used, size = (int(m.group(3)), int(m.group(4))) if m.group(3) else (1, 1)
        if used == 0 or used > size:
            return None
        cpus.update(c for c in range(lo, hi + 1) if (c - lo) % size < used)
    return cpus


def parse_cpu_mask(text: str, nr_cpus: int) -> set[int] | None:
    text = text.strip()
    if not text:
        return set()
    value = 0
    for chunk in text.split(","):
        if not re.fullmatch(r"[0-9a-fA-F]{1,8}", chunk):
            return None
        value = (value << 32) | int(chunk, 16)
    if value >> nr_cpus:
        return None
    return {c for c in range(nr_cpus) if value >> c & 1}


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
        if scenario.rmids is not None:
            topology = replace(topology, num_rmids=scenario.rmids)
        if scenario.closids is not None:
            topology = replace(topology, num_closids=scenario.closids)
        self.topology = topology
        self.scenario = scenario
        self.proc_root = proc_root
        if clock is None:
            clock = ManualClock() if scenario.clock == "manual" else time.monotonic
        self.clock = clock
        self._t0 = clock()
        self._mutex = threading.RLock()
        self.limbo_seconds = scenario.limbo_seconds
        self.faults: list[Fault] = list(scenario.faults)
        self._actions: list[Action] = list(scenario.actions)
        self._matcher = ProcessMatcher(scenario, proc_root, scan_interval)
        self._scan_interval = scan_interval
        self._attribution: list[tuple[Group, float, Timeline]] | None = None
        self._attributed_at = 0.0
        self._last = 0.0
        self.status = ""
        #: L3 ids whose CPUs are all offline: the kernel takes their
        #: mon_data/mon_L3_XX out of every group (open files answer ENODEV)
        self.offline_l3: set[int] = set()
        self.max_threshold_occupancy = topology.max_threshold_occupancy
        self.root = Group("", "ctrl", None, 0, 0, cpus=set(topology.cpus))
        self.root.schemata = {c.id: topology.cbm_mask for c in topology.l3}
        self._zero_counters(self.root)
        self.ctrl_groups: dict[str, Group] = {}
        self.free_rmids: deque[int] = deque(range(1, topology.num_rmids))
        self.limbo: list[tuple[float, int]] = []  # (release time, rmid)
        self.free_closids: set[int] = set(range(1, topology.num_closids))
        self.tasks: dict[int, TaskEntry] = {}

    # ----------------------------------------------------------- plumbing
    def now(self) -> float:
        """Seconds since the simulator started (scenario time)."""
        return self.clock() - self._t0

    def locked(self) -> threading.RLock:
        return self._mutex

    def _puts(self, text: str) -> None:
        self.status = (self.status + text)[:_STATUS_MAX]

    def _fail(self, err: int, text: str | None = None) -> SimError:
        if text:
            self._puts(text)
        return SimError(err)

    def _zero_counters(self, group: Group) -> None:
        group.counters = {
            (ev, d.id): 0.0 for ev in MBM_EVENTS for d in self.topology.mon_domains
        }

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
                self._integrate(self._last, max(self._last, action.at))
                self._last = max(self._last, action.at)
                self.apply_action(action)
            self._integrate(self._last, t)
            self._last = max(self._last, t)
            self._release_limbo(t)

    def _release_limbo(self, t: float) -> None:
        ready = sorted(e for e in self.limbo if e[0] <= t)
        if ready:
            self.limbo = [e for e in self.limbo if e[0] > t]
            self.free_rmids.extend(rmid for _, rmid in ready)

    def _changed(self) -> None:
        """Membership changed: integrate up to now with the old membership,
        then look again at the host next time."""
        self.advance()
        self._attribution = None
        self._matcher.invalidate()

    # ------------------------------------------------------------ RMIDs
    def _alloc_rmid(self) -> int:
        """An RMID for a new group; EBUSY (RMIDs in limbo) or ENOSPC, both
        reported as "Out of RMIDs" as the kernel's mkdir does."""
        if not self.free_rmids:
            raise self._fail(errno.EBUSY if self.limbo else errno.ENOSPC, "Out of RMIDs\n")
        return self.free_rmids.popleft()

    def _free_rmid(self, rmid: int) -> None:
        if rmid == 0 or rmid >= self.topology.num_rmids:
            return
        if self.limbo_seconds > 0:
            self.limbo.append((self.now() + self.limbo_seconds, rmid))
        else:
            self.free_rmids.append(rmid)

    def set_rmids(self, num_rmids: int) -> None:
        """Change info/L3_MON/num_rmids (RMIDs in use stay in use)."""
        with self._mutex:
            num_rmids = max(1, int(num_rmids))
            self.topology = replace(self.topology, num_rmids=num_rmids)
            used = {g.rmid for g in self.groups()}
            self.limbo = [e for e in self.limbo if e[1] < num_rmids]
            in_limbo = {r for _, r in self.limbo}
            kept = [r for r in self.free_rmids if r < num_rmids]
            known = used | in_limbo | set(kept)
            kept += [r for r in range(1, num_rmids) if r not in known]
            self.free_rmids = deque(kept)

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
            self.limbo_seconds = max(0.0, float(seconds))
            t = self.now()
            self.limbo = [(min(rel, t + self.limbo_seconds), r) for rel, r in self.limbo]
            self._release_limbo(t)

    # ----------------------------------------------------------- mkdir/rmdir
    def mkdir(self, parts: tuple[str, ...]) -> Group:
        with self._mutex:
            self.advance()
            name = parts[-1] if parts else ""
            if "\n" in name:
                raise SimError(errno.EINVAL)
            if parts and parts[0] == "info":
                raise SimError(errno.ENODEV)
            if self.group_at(parts) is not None or (len(parts) == 1 and name in _ROOT_NAMES):
                raise SimError(errno.EEXIST)
            self.status = ""
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
            self._changed()
            return group

    def _mkdir_ctrl(self, name: str) -> Group:
        if not self.free_closids:
            raise self._fail(errno.ENOSPC, "Out of CLOSIDs\n")
        closid = min(self.free_closids)
        rmid = self._alloc_rmid()
        schemata: dict[int, int] = {}
        for cache in self.topology.l3:
            excl = 0
            for g in self.ctrl_groups.values():
                if g.mode == "exclusive":
                    excl |= g.schemata.get(cache.id, 0)
            cbm = self.topology.cbm_mask & ~excl
            if bin(cbm).count("1") < max(1, self.topology.min_cbm_bits):
                self.free_rmids.appendleft(rmid)
                raise self._fail(errno.ENOSPC, f"No space on L3:{cache.id}\n")
            schemata[cache.id] = cbm
        self.free_closids.discard(closid)
        group = Group(name, "ctrl", None, closid, rmid, schemata=schemata)
        self._zero_counters(group)
        self.ctrl_groups[name] = group
        return group

    def _mkdir_mon(self, parent: Group, name: str) -> Group:
        rmid = self._alloc_rmid()
        group = Group(name, "mon", parent, parent.closid, rmid)
        self._zero_counters(group)
        parent.children[name] = group
        return group

    def rmdir(self, parts: tuple[str, ...]) -> None:
        with self._mutex:
            self.advance()
            group = self.group_at(parts)
            if group is None:
                if self._exists(parts):
                    raise SimError(errno.EPERM)
                raise SimError(errno.ENOENT)
            if group.is_root:
                raise SimError(errno.EPERM)
            self._changed()
            if group.kind == "mon":
                assert group.parent is not None
                for entry in self.tasks.values():
                    if entry.mon is group:
                        entry.mon = None
                group.parent.cpus |= group.cpus
                self._free_rmid(group.rmid)
                del group.parent.children[group.name]
                group.deleted = True
                return
            for entry in self.tasks.values():
                if entry.ctrl is group:
                    entry.ctrl, entry.mon = self.root, None
            self.root.cpus |= group.cpus
            self._free_rmid(group.rmid)
            self.free_closids.add(group.closid)
            for child in group.children.values():
                self._free_rmid(child.rmid)
                child.deleted = True
            del self.ctrl_groups[group.name]
            group.deleted = True

    def rename(self, old: tuple[str, ...], new: tuple[str, ...]) -> None:
        with self._mutex:
            self.advance()
            group = self.group_at(old)
            if group is None:
                raise SimError(errno.ENOENT if not self._exists(old) else errno.EPERM)
            self.status = ""
            if group.kind != "mon":
                raise self._fail(errno.EPERM, "Source must be a MON group\n")
            new_parent: Group | None = None
            if len(new) == 2 and new[0] == "mon_groups":
                new_parent = self.root
            elif len(new) == 3 and new[1] == "mon_groups":
                new_parent = self.ctrl_groups.get(new[0])
            if new_parent is None or new[-1] == "mon_groups":
                raise self._fail(errno.EPERM, "Destination must be a mon_groups subdirectory\n")
            if group.cpus and group.parent is not new_parent:
                raise self._fail(errno.EPERM, "Cannot move a MON group that monitors CPUs\n")
            if new[-1] in new_parent.children and new_parent.children[new[-1]] is not group:
                raise SimError(errno.EEXIST)
            self._changed()
            assert group.parent is not None
            del group.parent.children[group.name]
            group.parent, group.name, group.closid = new_parent, new[-1], new_parent.closid
            new_parent.children[group.name] = group
            for entry in self.tasks.values():
                if entry.mon is group:
                    entry.ctrl = new_parent

    def _exists(self, parts: tuple[str, ...]) -> bool:
        from ceilometer_cmt.simulator.tree import resolve  # circular at import time

        try:
            resolve(self, parts)
        except SimError:
            return False
        return True

    # ------------------------------------------------------------- tasks
    def _entry(self, tid: int) -> TaskEntry | None:
        """The task's entry if it is still the same task."""
        entry = self.tasks.get(tid)
        if entry is None:
            return None
        if host.task_start(self.proc_root, tid) != entry.start:
            del self.tasks[tid]
            return None
        return entry

    def _inherit(self, tid: int) -> TaskEntry | None:
        """A task with no entry: did it start inside an assigned one?"""
        if not self.tasks:
            return None
        info = host.task_info(self.proc_root, tid)
        if info is None:
            return None
        origin = info.tgid if info.tgid != tid else info.ppid
        parent = self.tasks.get(origin)
        # Strictly after: a task started in the same clock tick as the
        # assignment counts as older (a plugin must write it itself).
        if parent is None or info.start <= parent.since:
            return None
        if self._entry(origin) is None:
            return None
        entry = TaskEntry(parent.ctrl, parent.mon, info.start, info.start, info.tgid)
        self.tasks[tid] = entry
        return entry

    def _membership(self, tid: int) -> TaskEntry | None:
        return self._entry(tid) or self._inherit(tid)

    def write_tasks(self, group: Group, data: bytes, caller: Caller) -> None:
        with self._mutex:
            self.advance()
            self.status = ""
            buf = data.decode("utf-8", "replace")
            error: int | None = None
            while buf and buf[0] not in "\0\n":
                token, _, rest = buf.partition(",")
                buf = rest if _ else ""
                token = token.strip()
                pid = kstrtoint(token)
                if pid is None:
                    self._puts(f"Task list parsing error pid {token}\n")
                    error = errno.EINVAL
                    break
                if pid < 0:
                    self._puts(f"Invalid pid {pid}\n")
                    error = errno.EINVAL
                    break
                err = self._move_task(pid or caller.pid, group, caller)
                if err:
                    self._puts(f"Error while processing task {pid or caller.pid}\n")
                    error = err
                    break
            if error is not None:
                raise SimError(error)

    def _move_task(self, tid: int, group: Group, caller: Caller) -> int:
        info = host.task_info(self.proc_root, tid)
        if info is None:
            self._puts(f"No task {tid}\n")
            return errno.ESRCH
        if caller.uid != 0 and caller.uid not in (info.uid, info.suid):
            self._puts(f"No permission to move task {tid}\n")
            return errno.EPERM
        current = self._membership(tid)
        ctrl = current.ctrl if current else self.root
        mon = current.mon if current else None
        if group.kind == "mon":
            if mon is group:
                return 0
            if ctrl is not group.parent:
                self._puts("Can't move task to different control group\n")
                return errno.EINVAL
            new_ctrl, new_mon = ctrl, group
        else:
            if ctrl is group and mon is None and current is not None:
                return 0
            new_ctrl, new_mon = group, None
        self._changed()
        self.tasks[tid] = TaskEntry(new_ctrl, new_mon, info.start, host.now_ticks(), info.tgid)
        return 0

    def task_ids(self, group: Group) -> list[int]:
        """Tids in ``group``: a control group lists its monitor groups' too."""
        with self._mutex:
            if group.is_root:
                return self._root_tasks()
            found: set[int] = set()
            for tid in list(self.tasks):
                entry = self._entry(tid)
                if entry is not None and self._in(entry, group):
                    found.add(tid)
            for tgid in {e.tgid for e in self.tasks.values()}:
                for tid in host.threads_of(self.proc_root, tgid):
                    if tid not in self.tasks:
                        entry = self._inherit(tid)
                        if entry is not None and self._in(entry, group):
                            found.add(tid)
            return sorted(found)

    @staticmethod
    def _in(entry: TaskEntry, group: Group) -> bool:
        return entry.mon is group if group.kind == "mon" else entry.ctrl is group

    def _root_tasks(self) -> list[int]:
        found = []
        for pid in host.all_pids(self.proc_root):
            for tid in host.threads_of(self.proc_root, pid):
                entry = self._membership(tid)
                if entry is None or entry.ctrl is self.root:
                    found.append(tid)
        return sorted(found)

    # -------------------------------------------------------------- cpus
    def write_cpus(self, group: Group, data: bytes, as_list: bool) -> None:
        with self._mutex:
            self.status = ""
            text = data.decode("utf-8", "replace")
            nr = max(self.topology.cpus) + 1
            new = parse_cpu_list(text) if as_list else parse_cpu_mask(text, nr)
            if new is None:
                raise self._fail(errno.EINVAL, "Bad CPU list/mask\n")
            if not new <= set(self.topology.cpus):
                raise self._fail(errno.EINVAL, "Can only assign online CPUs\n")
            self._changed()
            if group.kind == "mon":
                assert group.parent is not None
                if not new <= group.parent.cpus:
                    raise self._fail(
                        errno.EINVAL, "Can only add CPUs to mongroup that belong to parent\n"
                    )
                added = new - group.cpus
                for sibling in group.parent.children.values():
                    if sibling is not group:
                        sibling.cpus -= added
                group.cpus = set(new)
                return
            dropped = group.cpus - new
            if dropped and group.is_root:
                raise self._fail(errno.EINVAL, "Can't drop CPUs from default group\n")
            self.root.cpus |= dropped
            added = new - group.cpus
            for other in (self.root, *self.ctrl_groups.values()):
                if other is not group and other.cpus & added:
                    other.cpus -= added
                    for child in other.children.values():
                        child.cpus &= other.cpus
            group.cpus = set(new)
            for child in group.children.values():
                child.cpus = set()

    # ---------------------------------------------------------- schemata
    def write_schemata(self, group: Group, data: bytes) -> None:
        with self._mutex:
            text = data.decode("utf-8", "replace")
            if not text.endswith("\n"):
                raise SimError(errno.EINVAL)
            self.status = ""
            staged: dict[int, int] = {}
            for line in text[:-1].split("\n"):
                resname, sep, rest = line.partition(":")
                resname = resname.strip()
                if not sep:
                    raise self._fail(errno.EINVAL, "Missing ':'\n")
                if rest == "":
                    raise self._fail(errno.EINVAL, f"Missing '{resname}' value\n")
                if resname != "L3" or group.closid >= self.topology.num_closids:
                    raise self._fail(
                        errno.EINVAL, f"Unknown or unsupported resource name '{resname}'\n"
                    )
                self._parse_l3(rest, staged)
            group.schemata.update(staged)

    def _parse_l3(self, line: str, staged: dict[int, int]) -> None:
        ids = {c.id for c in self.topology.l3}
        while line:
            dom, _, line = line.partition(";")
            id_text, eq, mask = dom.partition("=")
            if not eq or not re.fullmatch(r"\s*\+?\d+\s*", id_text or "x"):
                raise self._fail(errno.EINVAL, "Missing '=' or non-numeric domain\n")
            dom_id = int(id_text)
            if dom_id not in ids:
                raise SimError(errno.EINVAL)
            if dom_id in staged:
                raise self._fail(errno.EINVAL, f"Duplicate domain {dom_id}\n")
            staged[dom_id] = self._cbm(mask.strip())

    def _cbm(self, text: str) -> int:
        topo = self.topology
        if not re.fullmatch(r"(0[xX])?[0-9a-fA-F]+", text):
            raise self._fail(errno.EINVAL, f"Non-hex character in the mask {text}\n")
        val = int(text, 16)
        if (topo.min_cbm_bits > 0 and val == 0) or val > topo.cbm_mask:
            raise self._fail(errno.EINVAL, "Mask out of range\n")
        if val:
            low = (val & -val).bit_length() - 1
            run = val >> low
            contiguous = run & (run + 1) == 0
            width = (run ^ (run & (run + 1))).bit_length() if not contiguous else run.bit_length()
        else:
            contiguous, width = True, 0
        if not topo.sparse_masks and not contiguous:
            raise self._fail(errno.EINVAL, f"The mask {val:x} has non-consecutive 1-bits\n")
        if width < topo.min_cbm_bits:
            raise self._fail(errno.EINVAL, f"Need at least {topo.min_cbm_bits} bits in the mask\n")
        return val

    def write_mode(self, group: Group, data: bytes) -> None:
        with self._mutex:
            text = data.decode("utf-8", "replace")
            if not text.endswith("\n"):
                raise SimError(errno.EINVAL)
            self.status = ""
            mode = text[:-1]
            if group.is_root:
                raise self._fail(errno.EINVAL, "Cannot change default resource group's mode\n")
            if mode not in ("shareable", "exclusive"):
                raise self._fail(errno.EINVAL, "Unknown or unsupported mode\n")
            group.mode = mode

    def write_max_threshold(self, data: bytes) -> None:
        with self._mutex:
            value = kstrtoint(data.decode("utf-8", "replace").strip())
            limit = max(c.size for c in self.topology.l3)
            if value is None or value < 0:
                raise SimError(errno.EINVAL)
            if value > limit:
                raise SimError(errno.EINVAL)
            gran = self.topology.occupancy_granularity
            self.max_threshold_occupancy = value // gran * gran

    # ------------------------------------------------------------ values
    def _attributions(self) -> list[tuple[Group, float, Timeline]]:
        wall = time.monotonic()
        if self._attribution is not None and wall - self._attributed_at < self._scan_interval:
            return self._attribution
        result: list[tuple[Group, float, Timeline]] = []
        for pid, load in self._matcher.matched().items():
            tids = host.threads_of(self.proc_root, pid)
            if not tids:
                continue
            shares = [(pid, 1.0)] if load.split == "main" else [(t, 1 / len(tids)) for t in tids]
            for tid, share in shares:
                entry = self._membership(tid)
                result.append((entry.group if entry else self.root, share, load.timeline))
        if self.scenario.background is not None:
            result.append((self.root, 1.0, self.scenario.background))
        self._attribution = result
        self._attributed_at = wall
        return result

    def _integrate(self, t0: float, t1: float) -> None:
        if t1 <= t0:
            return
        for group, share, timeline in self._attributions():
            for dom in self.topology.mon_domains:
                if dom.l3_id in self.offline_l3:
                    continue
                for event, metric in MBM_EVENTS.items():
                    key = (event, dom.id)
                    if key in group.counters:
                        group.counters[key] += share * timeline.integral(metric, dom.id, t0, t1)

    def _occupancy(self, t: float) -> dict[tuple[int, int], int]:
        """(id(group), domain) -> bytes, capped per domain and rounded."""
        raw: dict[tuple[int, int], float] = {}
        for group, share, timeline in self._attributions():
            for dom in self.topology.mon_domains:
                key = (id(group), dom.id)
                raw[key] = raw.get(key, 0.0) + share * timeline.value("occupancy", dom.id, t)
        gran = self.topology.occupancy_granularity
        result: dict[tuple[int, int], int] = {}
        for dom in self.topology.mon_domains:
            total = sum(v for (_, d), v in raw.items() if d == dom.id)
            scale = dom.size / total if total > dom.size else 1.0
            for (gid, d), v in raw.items():
                if d == dom.id:
                    result[(gid, d)] = int(v * scale + _EPSILON) // gran * gran
        return result

    def _rmid_value(
        self, group: Group, domain: int, event: str, t: float, occ: dict[tuple[int, int], int]
    ) -> int | str:
        for fault in self.faults:
            if fault.applies(group.path, domain, event, t):
                return fault.value
        if event == "llc_occupancy":
            return occ.get((id(group), domain), 0)
        # Shares of a load are fractions: absorb float error before flooring.
        return int(group.counters.get((event, domain), 0.0) + _EPSILON)

    def read_event(self, group: Group, l3_id: int, sub_id: int | None, event: str) -> str:
        """The text of ``mon_data/mon_L3_XX[/mon_sub_L3_YY]/<event>``; ENODEV
        once the domain went offline (a removed kernfs file kept open)."""
        with self._mutex:
            if l3_id in self.offline_l3:
                raise SimError(errno.ENODEV)
            self.advance()
            t = self.now()
            occ = self._occupancy(t)
            if sub_id is not None or not self.topology.snc:
                leaves = [sub_id if sub_id is not None else l3_id]
                summing = False
            else:
                leaves = [d.id for d in self.topology.domains_of(l3_id)]
                summing = True
            rmids = [group, *group.children.values()] if group.kind == "ctrl" else [group]
            values: list[int | str] = []
            for g in rmids:
                parts = [self._rmid_value(g, leaf, event, t, occ) for leaf in leaves]
                numbers = [p for p in parts if isinstance(p, int)]
                if summing:
                    values.append(sum(numbers) if numbers else "Unavailable")
                else:
                    values.append(parts[0])
            numbers = [v for v in values if isinstance(v, int)]
            result = sum(numbers) if numbers else values[0]
            return f"{result}\n"

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
                self._zero_counters(group)
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
                "free_rmids": len(self.free_rmids),
                "limbo_rmids": len(self.limbo),
                "free_closids": len(self.free_closids),
                "limbo_seconds": self.limbo_seconds,
                "groups": {
                    g.path: {"rmid": g.rmid, "closid": g.closid} for g in self.groups()
                },
                "faults": len(self.faults),
                "last_cmd_status": self.status or "ok\n",
            }


_ROOT_NAMES = frozenset(
    {"info", "mon_groups", "mon_data", "tasks", "cpus", "cpus_list", "schemata", "mode", "size"}
)
