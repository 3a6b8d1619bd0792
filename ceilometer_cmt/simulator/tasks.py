"""Which group each host task is in: the ``tasks`` files.

Every host task is in one control group and at most one monitor group of it.
A task is known by tid *and* start time, so an exited task vanishes from
listings and a reused tid is a new task (in the root group).

Inheritance: a thread started after its main thread was assigned, or a
process forked after its parent's main thread was assigned, joins that group
(the kernel copies the group at fork; the simulator sees the result when it
next looks at those tasks).  Start times have a clock-tick (10 ms)
resolution; a task started in the assignment's tick counts as older, so the
simulator never lets a plugin off for a thread it did not write.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

from ceilometer_cmt.simulator import procfs
from ceilometer_cmt.simulator.errors import SimError
from ceilometer_cmt.simulator.groups import Caller, Group, TaskEntry
from ceilometer_cmt.simulator.writes import kstrtoint


class Membership:
    """Task -> group.  ``on_change`` runs just before a task moves (the
    model brings the counters up to now with the old membership)."""

    def __init__(self, proc_root: str, root: Group, on_change: Callable[[], None]) -> None:
        self.proc_root = proc_root
        self.root = root
        self._on_change = on_change
        #: tid -> entry, for tasks written (or inherited) out of the root
        self.entries: dict[int, TaskEntry] = {}

    def _entry(self, tid: int) -> TaskEntry | None:
        """The task's entry if it is still the same task."""
        entry = self.entries.get(tid)
        if entry is None:
            return None
        if procfs.task_start(self.proc_root, tid) != entry.start:
            del self.entries[tid]
            return None
        return entry

    def _inherit(self, tid: int) -> TaskEntry | None:
        """A task with no entry: did it start inside an assigned one?"""
        if not self.entries:
            return None
        info = procfs.task_info(self.proc_root, tid)
        if info is None:
            return None
        origin = info.tgid if info.tgid != tid else info.ppid
        parent = self.entries.get(origin)
        # Strictly after: a task started in the same clock tick as the
        # assignment counts as older (a plugin must write it itself).
        if parent is None or info.start <= parent.since:
            return None
        if self._entry(origin) is None:
            return None
        entry = TaskEntry(parent.ctrl, parent.mon, info.start, info.start, info.tgid)
        self.entries[tid] = entry
        return entry

    def of(self, tid: int) -> TaskEntry | None:
        """The entry of ``tid``; None means the root group."""
        return self._entry(tid) or self._inherit(tid)

    # ----------------------------------------------------------- writes
    def write(self, group: Group, data: bytes, caller: Caller) -> None:
        """A write to ``group``'s ``tasks``: comma-separated pids, 0 being the
        caller; stops at the first error, as the kernel does."""
        buf = data.decode("utf-8", "replace")
        while buf and buf[0] not in "\0\n":
            token, comma, rest = buf.partition(",")
            buf = rest if comma else ""
            token = token.strip()
            pid = kstrtoint(token)
            if pid is None:
                raise SimError(errno.EINVAL, f"Task list parsing error pid {token}\n")
            if pid < 0:
                raise SimError(errno.EINVAL, f"Invalid pid {pid}\n")
            tid = pid or caller.pid
            try:
                self._move(tid, group, caller)
            except SimError as e:
                raise SimError(e.errno, f"{e.status}Error while processing task {tid}\n") from None

    def _move(self, tid: int, group: Group, caller: Caller) -> None:
        info = procfs.task_info(self.proc_root, tid)
        if info is None:
            raise SimError(errno.ESRCH, f"No task {tid}\n")
        if caller.uid != 0 and caller.uid not in (info.uid, info.suid):
            raise SimError(errno.EPERM, f"No permission to move task {tid}\n")
        current = self.of(tid)
        ctrl = current.ctrl if current else self.root
        mon = current.mon if current else None
        if group.kind == "mon":
            if mon is group:
                return
            if ctrl is not group.parent:
                raise SimError(errno.EINVAL, "Can't move task to different control group\n")
            new_ctrl, new_mon = ctrl, group
        else:
            if ctrl is group and mon is None and current is not None:
                return
            new_ctrl, new_mon = group, None
        self._on_change()
        self.entries[tid] = TaskEntry(new_ctrl, new_mon, info.start, procfs.now_ticks(), info.tgid)

    # ------------------------------------------------- groups going away
    def group_removed(self, group: Group) -> None:
        """rmdir: a monitor group's tasks stay in its control group, a
        control group's go back to the root."""
        for entry in self.entries.values():
            if group.kind == "mon" and entry.mon is group:
                entry.mon = None
            elif group.kind == "ctrl" and entry.ctrl is group:
                entry.ctrl, entry.mon = self.root, None

    def group_moved(self, group: Group) -> None:
        """rename: a monitor group's tasks follow it to its new parent."""
        assert group.parent is not None
        for entry in self.entries.values():
            if entry.mon is group:
                entry.ctrl = group.parent

    # ------------------------------------------------------------ reads
    def ids(self, group: Group) -> list[int]:
        """Tids in ``group``: a control group lists its monitor groups' too."""
        if group.is_root:
            return self._root_ids()
        found: set[int] = set()
        for tid in list(self.entries):
            entry = self._entry(tid)
            if entry is not None and self._in(entry, group):
                found.add(tid)
        for tgid in {e.tgid for e in self.entries.values()}:
            for tid in procfs.threads_of(self.proc_root, tgid):
                if tid not in self.entries:
                    entry = self._inherit(tid)
                    if entry is not None and self._in(entry, group):
                        found.add(tid)
        return sorted(found)

    @staticmethod
    def _in(entry: TaskEntry, group: Group) -> bool:
        return entry.mon is group if group.kind == "mon" else entry.ctrl is group

    def _root_ids(self) -> list[int]:
        found = []
        for pid in procfs.all_pids(self.proc_root):
            for tid in procfs.threads_of(self.proc_root, pid):
                entry = self.of(tid)
                if entry is None or entry.ctrl is self.root:
                    found.append(tid)
        return sorted(found)
