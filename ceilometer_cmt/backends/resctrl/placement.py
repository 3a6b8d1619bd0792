"""Placing instances' new threads into our monitor groups, for one cycle.

A cycle that places threads takes the root lock once (``flock``, as every tool
that changes groups does) and lists the groups once more under it; from that
listing alone it decides which control group holds a thread (tasks may only
join a monitor group of their own control group) and which threads sit in
other tools' monitor groups (left there, never moved): a group that libvirt or
pqos made between the cycle's first listing and the lock is seen. It makes
our missing monitor groups (``<prefix><uuid>`` in that control group; a free
RMID lacking is said once per cycle and leaves the instance unmonitored until
the next) and writes the threads into their ``tasks`` files.

A mkdir refused for want of an RMID is not tried again in that control group
this cycle, but is in another one: on arm64 MPAM an RMID is a PMG of the
control group's PARTID (``RESCTRL_RMID_DEPENDS_ON_CLOSID``,
doc/kernel-facts-mpam.md), so one control group runs out while others still
have some.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable

from ceilometer_cmt.backends.resctrl import fs
from ceilometer_cmt.backends.resctrl.monitored_instance import MonitoredInstance
from ceilometer_cmt.errors import NotMonitored

LOG = logging.getLogger(__name__)

_NO_RMID = {errno.ENOSPC: "no free RMID (ENOSPC)", errno.EBUSY: "RMIDs in limbo (EBUSY)"}


class CyclePlacement:
    """What one cycle learns lazily under the root lock and shares between
    instances; counts the mkdirs and tasks writes it did."""

    def __init__(self, root: str, prefix: str, ops: fs.ResctrlOps,
                 warn: Callable[[str], None]) -> None:
        self.root = root
        self.prefix = prefix
        self.ops = ops
        self._warn = warn
        self._lock: fs.RootLock | None = None
        self._groups: fs.Groups | None = None
        self._ctrl_members: dict[int, str] | None = None
        self._foreign: set[int] | None = None
        #: control group -> why a mkdir in it failed this cycle (no RMID)
        self.no_rmid: dict[str, str] = {}
        self._warned = False
        self.mkdirs = 0
        self.writes = 0

    def lock(self) -> None:
        if self._lock is None:
            self._lock = fs.RootLock(self.root).__enter__()

    def close(self) -> None:
        if self._lock is not None:
            self._lock.__exit__(None, None, None)
            self._lock = None

    def warn_once(self, msg: str) -> None:
        if not self._warned:
            self._warned = True
            self._warn(msg)

    def groups(self) -> fs.Groups:
        """The groups listed under the root lock, once per cycle: what ctrl_of
        and foreign_mon_members decide from."""
        self.lock()  # taken once per cycle; a no-op when held
        if self._groups is None:
            self._groups = fs.list_groups(self.root)
        return self._groups

    def ctrl_of(self, tids: list[int]) -> dict[int, str]:
        """tid -> control group; a tid in no created group is in the default one."""
        if self._ctrl_members is None:
            members: dict[int, str] = {}
            for ctrl in self.groups():
                if ctrl:
                    for tid in fs.read_tasks(os.path.join(self.root, ctrl)):
                        members[tid] = ctrl
            self._ctrl_members = members
        return {tid: self._ctrl_members.get(tid, "") for tid in tids}

    def foreign_mon_members(self) -> set[int]:
        """TIDs in monitor groups that are not ours."""
        if self._foreign is None:
            found: set[int] = set()
            for path in fs.mon_group_paths(self.root, self.groups(), self.prefix,
                                                False):
                found |= fs.read_tasks(path)
            self._foreign = found
        return self._foreign

    def place(self, t: MonitoredInstance, new: list[int]) -> None:
        """Write ``new`` threads of ``t`` into our group of their control group
        (made when missing); threads in another tool's monitor group stay
        there (``t.foreign``). NotMonitored when ``t`` has no group at all."""
        self.lock()
        by_ctrl = self.ctrl_of(new)
        foreign = self.foreign_mon_members()
        for ctrl in sorted(set(by_ctrl.values())):
            mine = [tid for tid in new if by_ctrl[tid] == ctrl and tid not in foreign]
            skipped = [tid for tid in new if by_ctrl[tid] == ctrl and tid in foreign]
            if skipped:
                LOG.warning("instance %s: %d thread(s) sit in another tool's monitor group; "
                            "left there, their cache use is not counted", t.uuid, len(skipped))
                t.foreign.update(skipped)
            if not mine:
                continue
            path = t.groups.get(ctrl) or self._make_group(t, ctrl)
            failures = self.ops.write_tasks(os.path.join(path, "tasks"), mine, t.domain_name)
            self.writes += len(mine)
            failed = {tid for tid, err in failures if err != errno.ESRCH}
            for tid, err in failures:
                if err != errno.ESRCH:
                    LOG.warning("instance %s: cannot move thread %d into %s: %s (%s)",
                                t.uuid, tid, path, os.strerror(err),
                                fs.last_cmd_status(self.root))
            t.assigned.update(tid for tid in mine if tid not in failed)
            if len(failed) < len(mine):
                t.idle.discard(ctrl)
        if not t.groups:
            raise NotMonitored("no thread could be placed in a monitor group")

    def _make_group(self, t: MonitoredInstance, ctrl: str) -> str:
        if ctrl in self.no_rmid:
            raise NotMonitored(self.no_rmid[ctrl])
        path = os.path.join(fs.mon_groups_path(self.root, ctrl), self.prefix + t.uuid)
        try:
            self.ops.mkdir(path)
            self.mkdirs += 1
        except FileExistsError:
            pass  # made by a second agent on this host: share it
        except OSError as e:
            if e.errno in _NO_RMID:
                reason = _NO_RMID[e.errno]
                if e.strerror and e.strerror != os.strerror(e.errno):
                    reason += f": {e.strerror}"  # the privsep daemon's reserve
                self.no_rmid[ctrl] = reason
                status = fs.last_cmd_status(self.root)
                self.warn_once(f"cannot create resctrl monitor group: {reason}; "
                               f"last_cmd_status: {status}; affected instances stay "
                               "unmonitored and are retried next cycle")
                raise NotMonitored(reason) from e
            raise
        t.groups[ctrl] = path
        t.made.add(ctrl)
        return path
