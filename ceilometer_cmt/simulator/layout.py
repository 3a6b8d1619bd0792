"""What the simulated mount looks like: its fstype and which paths exist.

Layout and names follow the kernel (``rdtgroup.c`` ``res_common_files``):
group files ``tasks``, ``cpus``, ``cpus_list`` in every group, ``schemata``,
``size`` and ``mode`` in control groups, ``mon_data/mon_L3_XX/<event>``, with
SNC also ``mon_L3_XX/mon_sub_L3_YY/<event>``; ``info/`` at the root only.

Newer kernels add, when the topology has them:

* Linux 6.18 (``res_common_files[]``, ``resctrl_l3_mon_resource_init()``):
  ``info/L3_MON/mbm_assign_mode``; with assignable counters also
  ``num_mbm_cntrs``, ``available_mbm_cntrs``, ``mbm_assign_on_mkdir``,
  ``event_configs/<event>/event_filter`` and ``mbm_L3_assignments`` in every
  group; the BMEC files ``mbm_{total,local}_bytes_config`` only outside
  ``mbm_event`` mode (``resctrl_bmec_files_show()``);
* Linux 7.0 (Intel AET): ``info/PERF_PKG_MON/{num_rmids,mon_features}`` and
  ``mon_data/mon_PERF_PKG_XX/<event>`` per package.
* arm64 MPAM (doc/kernel-facts-mpam.md): the assignment files with
  ``mbm_total_bytes`` as the only MBM event (``event_configs/`` and
  ``mbm_L3_assignments`` name no other), no BMEC files.

:func:`lookup` only names things; :mod:`.tree` says what each file reads and
writes.  The model uses :func:`lookup` to tell "not a group" (EPERM) from "no
such path" (ENOENT) in rmdir and rename.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ceilometer_cmt.simulator.assign import CounterAssign
from ceilometer_cmt.simulator.groups import Group
from ceilometer_cmt.simulator.topology import PERF_PKG_EVENTS, Topology

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
INFO_ASSIGN = ("available_mbm_cntrs", "event_configs", "mbm_assign_on_mkdir", "num_mbm_cntrs")
INFO_PERF_PKG_MON = ("mon_features", "num_rmids")
ASSIGNMENTS = "mbm_L3_assignments"
#: Names at the root that are not control groups (mkdir of one: EEXIST).
ROOT_NAMES = frozenset({"info", "mon_groups", "mon_data", *GROUP_FILES, *CTRL_FILES})


class Mount(Protocol):
    """What :func:`lookup` needs to know (a :class:`.model.Model` is one)."""

    topology: Topology
    offline_l3: set[int]
    ctrl_groups: dict[str, Group]
    assign: CounterAssign

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
    pkg_id: int | None = None  # an event of mon_data/mon_PERF_PKG_XX


def l3_name(l3_id: int) -> str:
    return f"mon_L3_{l3_id:02d}"


def pkg_name(pkg_id: int) -> str:
    return f"mon_PERF_PKG_{pkg_id:02d}"


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


def group_files(mount: Mount, group: Group) -> tuple[str, ...]:
    files = GROUP_FILES + CTRL_FILES if group.kind == "ctrl" else GROUP_FILES
    return files + (ASSIGNMENTS,) if mount.assign.assignable else files


def lookup(mount: Mount, parts: tuple[str, ...]) -> Place | None:
    """What ``parts`` (relative to the mount) names, or None: no such path."""
    if parts and parts[0] == "info":
        return _info(mount, parts[1:])
    # Find the longest prefix that is a group.
    for cut in (3, 2, 1, 0):
        if cut <= len(parts):
            group = mount.group_at(parts[:cut])
            if group is not None and (cut != 2 or parts[0] == "mon_groups"):
                return _in_group(mount, group, parts[cut:])
    return None


def _in_group(mount: Mount, group: Group, rest: tuple[str, ...]) -> Place | None:
    files = group_files(mount, group)
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
    pkgs = [p.id for p in topo.packages]
    if not rest:
        return Place(entries=tuple(l3_name(i) for i in online_l3_ids(mount))
                     + tuple(pkg_name(p) for p in pkgs))
    pkg_id = _parse_id(rest[0], "mon_PERF_PKG_")
    if pkg_id is not None and pkg_id in pkgs:
        if len(rest) == 1:
            return Place(entries=PERF_PKG_EVENTS)
        if len(rest) == 2 and rest[1] in PERF_PKG_EVENTS:
            return Place(name=rest[1], group=group, pkg_id=pkg_id)
        return None
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


def info_dirs(mount: Mount) -> dict[str, tuple[str, ...]]:
    """``info/`` directories (by path below ``info/``, ``""`` is ``info/``)
    and their entries, as this topology and mode show them."""
    topo, assign = mount.topology, mount.assign
    l3_mon = list(INFO_L3_MON)
    if topo.assign_mode_file:
        l3_mon.append("mbm_assign_mode")
    if assign.assignable:
        l3_mon.extend(INFO_ASSIGN)
    if assign.bmec_files:
        l3_mon.extend(f"{e}_config" for e in assign.bmec.config_events)
    dirs = {"": INFO_TOP, "L3": INFO_L3, "L3_MON": tuple(l3_mon)}
    if topo.packages:
        dirs[""] = (*INFO_TOP, "PERF_PKG_MON")
        dirs["PERF_PKG_MON"] = INFO_PERF_PKG_MON
    if assign.assignable:
        dirs["L3_MON/event_configs"] = assign.events
        for event in assign.events:
            dirs[f"L3_MON/event_configs/{event}"] = ("event_filter",)
    return {path: tuple(sorted(entries)) for path, entries in dirs.items()}


def _info(mount: Mount, rest: tuple[str, ...]) -> Place | None:
    dirs = info_dirs(mount)
    path = "/".join(rest)
    if path in dirs:
        return Place(entries=dirs[path])
    parent, _, name = path.rpartition("/")
    if rest and parent in dirs and name in dirs[parent]:
        return Place(name=path)
    return None
