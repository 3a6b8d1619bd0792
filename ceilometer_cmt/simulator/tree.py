"""The resctrl directory tree over a :class:`Model`: path -> directory or file.

Layout and modes follow the kernel (``rdtgroup.c`` ``res_common_files``):
group files ``tasks``, ``cpus``, ``cpus_list`` (0644) in every group,
``schemata`` (0644), ``size`` (0444) and ``mode`` (0644) in control groups,
``mon_data/mon_L3_XX/<event>`` (0444), with SNC also
``mon_L3_XX/mon_sub_L3_YY/<event>``; ``info/`` at the root only.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass

from ceilometer_cmt.simulator.model import Caller, Group, Model, SimError
from ceilometer_cmt.simulator.topology import format_cpu_list, format_cpu_mask


@dataclass(frozen=True)
class Dir:
    entries: tuple[str, ...]


@dataclass(frozen=True)
class File:
    mode: int
    read: Callable[[], str]
    write: Callable[[bytes, Caller], None] | None = None
    group: Group | None = None  # reads and writes fail with ENOENT once it is gone


Node = Dir | File


def _l3_name(l3_id: int) -> str:
    return f"mon_L3_{l3_id:02d}"


def _sub_name(dom_id: int) -> str:
    return f"mon_sub_L3_{dom_id:02d}"


def _parse_id(name: str, prefix: str) -> int | None:
    if not name.startswith(prefix):
        return None
    rest = name[len(prefix) :]
    if len(rest) < 2 or not rest.isdigit():
        return None
    value = int(rest)
    return value if f"{value:02d}" == rest else None


def resolve(model: Model, parts: tuple[str, ...]) -> Node:
    """The node at ``parts``; SimError(ENOENT) when there is none."""
    with model.locked():
        if parts and parts[0] == "info":
            return _info(model, parts[1:])
        # Find the longest prefix that is a group.
        for cut in (3, 2, 1, 0):
            if cut <= len(parts):
                group = model.group_at(parts[:cut])
                if group is not None and (cut != 2 or parts[0] == "mon_groups"):
                    return _in_group(model, group, parts[cut:])
        raise SimError(errno.ENOENT)


def _in_group(model: Model, group: Group, rest: tuple[str, ...]) -> Node:
    files = _group_files(model, group)
    if not rest:
        names = list(files) + ["mon_data"]
        if group.kind == "ctrl":
            names.append("mon_groups")
        if group.is_root:
            names.append("info")
            names.extend(model.ctrl_groups)
        return Dir(tuple(sorted(names)))
    head = rest[0]
    if len(rest) == 1 and head in files:
        return files[head]
    if head == "mon_groups" and group.kind == "ctrl" and len(rest) == 1:
        return Dir(tuple(sorted(group.children)))
    if head == "mon_data":
        return _mon_data(model, group, rest[1:])
    raise SimError(errno.ENOENT)


def _group_files(model: Model, group: Group) -> dict[str, File]:
    nr = max(model.topology.cpus) + 1

    def tasks() -> str:
        return "".join(f"{tid}\n" for tid in model.task_ids(group))

    files: dict[str, File] = {
        "tasks": File(
            0o644, tasks, lambda data, caller: model.write_tasks(group, data, caller), group
        ),
        "cpus": File(
            0o644,
            lambda: format_cpu_mask(group.cpus, nr) + "\n",
            lambda data, caller: model.write_cpus(group, data, as_list=False),
            group,
        ),
        "cpus_list": File(
            0o644,
            lambda: format_cpu_list(group.cpus) + "\n",
            lambda data, caller: model.write_cpus(group, data, as_list=True),
            group,
        ),
    }
    if group.kind == "ctrl":
        files["schemata"] = File(
            0o644,
            lambda: _schemata(model, group),
            lambda data, caller: model.write_schemata(group, data),
            group,
        )
        files["size"] = File(0o444, lambda: _size(model, group), None, group)
        files["mode"] = File(
            0o644,
            lambda: f"{group.mode}\n",
            lambda data, caller: model.write_mode(group, data),
            group,
        )
    return files


def _schemata(model: Model, group: Group) -> str:
    width = (model.topology.cbm_len + 3) // 4
    doms = ";".join(f"{i}={group.schemata.get(i, 0):0{width}x}" for i in _l3_ids(model))
    return f"L3:{doms}\n"


def _size(model: Model, group: Group) -> str:
    topo = model.topology
    parts = []
    for cache in topo.l3:
        bits = bin(group.schemata.get(cache.id, 0)).count("1")
        parts.append(f"{cache.id}={cache.size // topo.cbm_len * bits}")
    return "L3:" + ";".join(parts) + "\n"


def _l3_ids(model: Model) -> list[int]:
    """The L3 domains in mon_data: the online ones."""
    return [c.id for c in model.topology.l3 if c.id not in model.offline_l3]


def _mon_data(model: Model, group: Group, rest: tuple[str, ...]) -> Node:
    topo = model.topology
    events = topo.mon_features
    if not rest:
        return Dir(tuple(_l3_name(i) for i in _l3_ids(model)))
    l3_id = _parse_id(rest[0], "mon_L3_")
    if l3_id is None or l3_id not in _l3_ids(model):
        raise SimError(errno.ENOENT)
    subs = [d.id for d in topo.domains_of(l3_id)] if topo.snc else []
    if len(rest) == 1:
        return Dir(tuple(events) + tuple(_sub_name(s) for s in subs))
    if len(rest) == 2 and rest[1] in events:
        event = rest[1]
        return File(0o444, lambda: model.read_event(group, l3_id, None, event), None, group)
    sub_id = _parse_id(rest[1], "mon_sub_L3_")
    if sub_id is None or sub_id not in subs:
        raise SimError(errno.ENOENT)
    if len(rest) == 2:
        return Dir(tuple(events))
    if len(rest) == 3 and rest[2] in events:
        event = rest[2]
        return File(0o444, lambda: model.read_event(group, l3_id, sub_id, event), None, group)
    raise SimError(errno.ENOENT)


def _info(model: Model, rest: tuple[str, ...]) -> Node:
    topo = model.topology
    l3: dict[str, File] = {
        "bit_usage": File(0o444, lambda: _bit_usage(model)),
        "cbm_mask": File(0o444, lambda: f"{topo.cbm_mask:x}\n"),
        "min_cbm_bits": File(0o444, lambda: f"{topo.min_cbm_bits}\n"),
        "num_closids": File(0o444, lambda: f"{model.topology.num_closids}\n"),
        "shareable_bits": File(0o444, lambda: "0\n"),
        "sparse_masks": File(0o444, lambda: f"{int(topo.sparse_masks)}\n"),
    }
    l3_mon: dict[str, File] = {
        "max_threshold_occupancy": File(
            0o644,
            lambda: f"{model.max_threshold_occupancy}\n",
            lambda data, caller: model.write_max_threshold(data),
        ),
        "mon_features": File(0o444, lambda: "".join(f"{e}\n" for e in topo.mon_features)),
        "num_rmids": File(0o444, lambda: f"{model.topology.num_rmids}\n"),
    }
    top: dict[str, Node] = {
        "L3": Dir(tuple(sorted(l3))),
        "L3_MON": Dir(tuple(sorted(l3_mon))),
        "last_cmd_status": File(0o444, lambda: model.status or "ok\n"),
    }
    if not rest:
        return Dir(tuple(sorted(top)))
    if len(rest) == 1 and rest[0] in top:
        return top[rest[0]]
    if len(rest) == 2 and rest[0] == "L3" and rest[1] in l3:
        return l3[rest[1]]
    if len(rest) == 2 and rest[0] == "L3_MON" and rest[1] in l3_mon:
        return l3_mon[rest[1]]
    raise SimError(errno.ENOENT)


def _bit_usage(model: Model) -> str:
    topo = model.topology
    out = []
    for cache in topo.l3:
        shared = excl = 0
        for g in (model.root, *model.ctrl_groups.values()):
            if g.mode == "exclusive":
                excl |= g.schemata.get(cache.id, 0)
            else:
                shared |= g.schemata.get(cache.id, 0)
        chars = []
        for bit in range(topo.cbm_len - 1, -1, -1):
            if shared >> bit & 1:
                chars.append("S")
            elif excl >> bit & 1:
                chars.append("E")
            else:
                chars.append("0")
        out.append(f"{cache.id}=" + "".join(chars))
    return ";".join(out) + "\n"
