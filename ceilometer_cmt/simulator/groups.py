"""What a resctrl mount holds: groups, task entries, and who is calling.

* The root group is CLOSID 0, RMID 0; control groups are made at the root
  (a CLOSID and an RMID each); monitor groups in any control group's
  ``mon_groups`` (an RMID each, the CLOSID of their control group).
* A monitor group may be renamed into another control group's
  ``mon_groups`` (:func:`rename_target`, ``rdtgroup_rename()``).
* A task is in one control group and at most one monitor group of it; a
  :class:`TaskEntry` records that, with the task's start time so that a
  reused tid is a new task.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

from ceilometer_cmt.simulator.errors import SimError


@dataclass(frozen=True)
class Caller:
    """The process making a syscall (FUSE tells its uid and pid)."""

    uid: int = 0
    pid: int = 0


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


def rename_target(
    root: Group, ctrl_groups: dict[str, Group], group: Group, new: tuple[str, ...]
) -> Group:
    """The control group a monitor group may be renamed into."""
    if group.kind != "mon":
        raise SimError(errno.EPERM, "Source must be a MON group\n")
    new_parent: Group | None = None
    if len(new) == 2 and new[0] == "mon_groups":
        new_parent = root
    elif len(new) == 3 and new[1] == "mon_groups":
        new_parent = ctrl_groups.get(new[0])
    if new_parent is None or new[-1] == "mon_groups":
        raise SimError(errno.EPERM, "Destination must be a mon_groups subdirectory\n")
    if group.cpus and group.parent is not new_parent:
        raise SimError(errno.EPERM, "Cannot move a MON group that monitors CPUs\n")
    if new[-1] in new_parent.children and new_parent.children[new[-1]] is not group:
        raise SimError(errno.EEXIST)
    return new_parent
