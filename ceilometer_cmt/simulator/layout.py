"""What the simulated mount looks like: its fstype and which paths exist.

Layout and names follow the kernel (``rdtgroup.c`` ``res_common_files``):
group files ``tasks``, ``cpus``, ``cpus_list`` in every group, ``schemata``,
``size`` and ``mode`` in control groups, ``mon_data/mon_L3_XX/<event>``, with
SNC also ``mon_L3_XX/mon_sub_L3_YY/<event>``; ``info/`` at the root only.

:func:`lookup` only names things; :mod:`.tree` says what each file reads and
writes.  The model uses :func:`lookup` to tell "not a group" (EPERM) from "no
such path" (ENOENT) in rmdir and rename.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ceilometer_cmt.simulator.groups import Group
from ceilometer_cmt.simulator.topology import Topology

#: The FUSE subtype of the mount: ``/proc/self/mountinfo`` shows the fstype
#: ``fuse.cmt-resctrl-sim`` (never ``resctrl``).  The plugin keeps its own
#: copy (``ceilometer_cmt.backends.resctrl.fs.SIMULATOR_SUBTYPE``); a test checks that
#: the two agree.
SUBTYPE = "cmt-resctrl-sim"
FSTYPE = f"fuse.{SUBTYPE}"

GROUP_FILES = ("tasks", "cpus", "cpus_list")  # in every group
CTRL_FILES = ("schemata", "size", "mode")  # in control groups
INFO_TOP = ("L3", "L3_MON", "last_cmd_status")
INFO_L3 = ("bit_usage", "cbm_mask", "min_cbm_bits", "num_closids", "shareable_bits",
           "sparse_masks")
INFO_L3_MON = ("max_threshold_occupancy", "mon_features", "num_rmids")
#: Names at the root that are not control groups (mkdir of one: EEXIST).
ROOT_NAMES = frozenset({"info", "mon_groups", "mon_data", *GROUP_FILES, *CTRL_FILES})


class Mount(Protocol):
    """What :func:`lookup` needs to know (a :class:`.model.Model` is one)."""

    topology: Topology
    offline_l3: set[int]
    ctrl_groups: dict[str, Group]

    def group_at(self, parts: tuple[str, ...]) -> Group | None: ...


@dataclass(frozen=True)
class Place:
    """What a path names: a directory (``entries``) or a file.

    A file is ``name`` in ``group`` (``tasks``, ``schemata``...), or with
    ``l3_id`` set the event ``name`` of the group's ``mon_data`` (``sub_id``
    with SNC), or with no group ``info/<name>`` (``name`` like ``L3/cbm_mask``).
    """

    entries: tuple[str, ...] | None = None
    name: str = ""
    group: Group | None = None
    l3_id: int | None = None
    sub_id: int | None = None


def l3_name(l3_id: int) -> str:
    return f"mon_L3_{l3_id:02d}"


def sub_name(dom_id: int) -> str:
    return f"mon_sub_L3_{dom_id:02d}"


def _parse_id(name: str, prefix: str) -> int | None:
    if not name.startswith(prefix):
        return None
    rest = name[len(prefix) :]
    if len(rest) < 2 or not rest.isdigit():
        return None
    value = int(rest)
    return value if f"{value:02d}" == rest else None


def online_l3_ids(mount: Mount) -> list[int]:
    """The L3 domains in mon_data: the online ones."""
    return [c.id for c in mount.topology.l3 if c.id not in mount.offline_l3]


def group_files(group: Group) -> tuple[str, ...]:
    return GROUP_FILES + CTRL_FILES if group.kind == "ctrl" else GROUP_FILES


def lookup(mount: Mount, parts: tuple[str, ...]) -> Place | None:
    """What ``parts`` (relative to the mount) names, or None: no such path."""
    if parts and parts[0] == "info":
        return _info(parts[1:])
    # Find the longest prefix that is a group.
    for cut in (3, 2, 1, 0):
        if cut <= len(parts):
            group = mount.group_at(parts[:cut])
            if group is not None and (cut != 2 or parts[0] == "mon_groups"):
                return _in_group(mount, group, parts[cut:])
    return None


def _in_group(mount: Mount, group: Group, rest: tuple[str, ...]) -> Place | None:
    files = group_files(group)
    if not rest:
        names = [*files, "mon_data"]
        if group.kind == "ctrl":
            names.append("mon_groups")
        if group.is_root:
            names.append("info")
            names.extend(mount.ctrl_groups)
        return Place(entries=tuple(sorted(names)))
    head = rest[0]
    if len(rest) == 1 and head in files:
        return Place(name=head, group=group)
    if head == "mon_groups" and group.kind == "ctrl" and len(rest) == 1:
        return Place(entries=tuple(sorted(group.children)))
    if head == "mon_data":
        return _mon_data(mount, group, rest[1:])
    return None


def _mon_data(mount: Mount, group: Group, rest: tuple[str, ...]) -> Place | None:
    topo = mount.topology
    events = tuple(topo.mon_features)
    if not rest:
        return Place(entries=tuple(l3_name(i) for i in online_l3_ids(mount)))
    l3_id = _parse_id(rest[0], "mon_L3_")
    if l3_id is None or l3_id not in online_l3_ids(mount):
        return None
    subs = [d.id for d in topo.domains_of(l3_id)] if topo.snc else []
    if len(rest) == 1:
        return Place(entries=events + tuple(sub_name(s) for s in subs))
    if len(rest) == 2 and rest[1] in events:
        return Place(name=rest[1], group=group, l3_id=l3_id)
    sub_id = _parse_id(rest[1], "mon_sub_L3_")
    if sub_id is None or sub_id not in subs:
        return None
    if len(rest) == 2:
        return Place(entries=events)
    if len(rest) == 3 and rest[2] in events:
        return Place(name=rest[2], group=group, l3_id=l3_id, sub_id=sub_id)
    return None


def _info(rest: tuple[str, ...]) -> Place | None:
    dirs = {"L3": INFO_L3, "L3_MON": INFO_L3_MON}
    if not rest:
        return Place(entries=tuple(sorted(INFO_TOP)))
    if len(rest) == 1 and rest[0] in dirs:
        return Place(entries=tuple(sorted(dirs[rest[0]])))
    if len(rest) == 1 and rest[0] in INFO_TOP:
        return Place(name=rest[0])
    if len(rest) == 2 and rest[1] in dirs.get(rest[0], ()):
        return Place(name=f"{rest[0]}/{rest[1]}")
    return None
