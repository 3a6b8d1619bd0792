"""The resctrl directory tree over a :class:`.model.Model`: path -> node.

:mod:`.layout` says which paths exist; this module says what each file
reads and writes (modes as the kernel's: 0644 for writable files, 0444 for
the others).  A ``File`` keeps the group it belongs to, so that a file held
open after its group's rmdir answers ENOENT.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass

from ceilometer_cmt.simulator.errors import SimError
from ceilometer_cmt.simulator.groups import Caller, Group
from ceilometer_cmt.simulator.kstr import kstrtobool
from ceilometer_cmt.simulator.layout import lookup
from ceilometer_cmt.simulator.model import Model
from ceilometer_cmt.simulator.topology import PERF_PKG_EVENTS, format_cpu_list, format_cpu_mask


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


def resolve(model: Model, parts: tuple[str, ...]) -> Node:
    """The node at ``parts``; SimError(ENOENT) when there is none."""
    with model.locked():
        place = lookup(model, parts)
        if place is None:
            raise SimError(errno.ENOENT)
        if place.entries is not None:
            return Dir(place.entries)
        group = place.group
        if group is None:
            files = _info_files(model)
            return files[place.name] if place.name in files else _assign_files(model)[place.name]
        if place.pkg_id is not None:
            pkg, event = place.pkg_id, place.name
            return File(0o444, lambda: model.read_pkg_event(group, pkg, event), None, group)
        if place.l3_id is not None:
            l3_id, sub_id, event = place.l3_id, place.sub_id, place.name
            return File(
                0o444, lambda: model.read_event(group, l3_id, sub_id, event), None, group
            )
        return _group_files(model, group)[place.name]


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
    assign = model.assign
    files["mbm_L3_assignments"] = File(
        0o644,
        lambda: model.command(lambda: assign.assignments_text(group)),
        lambda data, caller: model.command(lambda: assign.write_assignments(group, data), data),
        group,
    )
    return files


def _schemata(model: Model, group: Group) -> str:
    """``L3:0=000ff;1=000ff`` (``%0*x``, older kernels) or, with
    ``padded_schemata``, ``    L3:0=ff;1=ff`` (``"%d=%x"``; the name padded
    by 4 because L3 is CDP-capable and CDP is off: ``schemata_list_add()``)."""
    topo = model.topology
    width = 0 if topo.padded_schemata else (topo.cbm_len + 3) // 4
    ids = [c.id for c in topo.l3 if c.id not in model.offline_l3]
    doms = ";".join(f"{i}={group.schemata.get(i, 0):0{width}x}" for i in ids)
    return ("    " if topo.padded_schemata else "") + f"L3:{doms}\n"


def _size(model: Model, group: Group) -> str:
    topo = model.topology
    parts = []
    for cache in topo.l3:
        bits = bin(group.schemata.get(cache.id, 0)).count("1")
        parts.append(f"{cache.id}={cache.size // topo.cbm_len * bits}")
    return "L3:" + ";".join(parts) + "\n"


def _info_files(model: Model) -> dict[str, File]:
    """``info/`` files by their path below ``info/``."""
    topo = model.topology
    return {
        "last_cmd_status": File(0o444, lambda: model.status or "ok\n"),
        "L3/bit_usage": File(0o444, lambda: _bit_usage(model)),
        "L3/cbm_mask": File(0o444, lambda: f"{topo.cbm_mask:x}\n"),
        "L3/min_cbm_bits": File(0o444, lambda: f"{topo.min_cbm_bits}\n"),
        "L3/num_closids": File(0o444, lambda: f"{model.topology.num_closids}\n"),
        "L3/shareable_bits": File(0o444, lambda: f"{topo.shareable_bits:x}\n"),
        "L3/sparse_masks": File(0o444, lambda: f"{int(topo.sparse_masks)}\n"),
        "L3_MON/max_threshold_occupancy": File(
            0o644,
            lambda: f"{model.max_threshold_occupancy}\n",
            lambda data, caller: model.write_max_threshold(data),
        ),
        "L3_MON/mon_features": File(0o444, lambda: _mon_features(model)),
        "L3_MON/num_rmids": File(0o444, lambda: f"{model.topology.num_rmids}\n"),
        "PERF_PKG_MON/num_rmids": File(0o444, lambda: f"{topo.perf_pkg_rmids}\n"),
        "PERF_PKG_MON/mon_features": File(
            0o444, lambda: "".join(f"{e}\n" for e in PERF_PKG_EVENTS)
        ),
    }


def _mon_features(model: Model) -> str:
    """``rdt_mon_features_show()``: a ``<event>_config`` line after each BMEC
    event while its files are shown."""
    bmec = model.assign.bmec
    out = []
    for event in model.topology.mon_features:
        out.append(f"{event}\n")
        if model.assign.bmec_files and event in bmec.config_events:
            out.append(f"{event}_config\n")
    return "".join(out)


def _assign_files(model: Model) -> dict[str, File]:
    """The ``info/L3_MON`` files of Linux 6.18 (:mod:`.assign`, :mod:`.bmec`):
    reads and writes whose kernel functions clear last_cmd_status go through
    :meth:`.Model.command`."""
    assign = model.assign

    def locked(fn: Callable[[], str]) -> Callable[[], str]:
        def read() -> str:
            with model.locked():
                return fn()

        return read

    def on_mkdir(data: bytes, caller: Caller) -> None:
        value = kstrtobool(data.decode("utf-8", "surrogateescape"))
        if value is None:  # kstrtobool() fails before the status is cleared
            raise SimError(errno.EINVAL)
        model.command(lambda: assign.write_on_mkdir(value))

    def groups() -> list[Group]:
        return list(model.groups())

    files = {
        "L3_MON/mbm_assign_mode": File(
            0o644, locked(assign.mode_text),
            lambda data, caller: model.command(lambda: assign.write_mode(data, groups()), data),
        ),
        "L3_MON/num_mbm_cntrs": File(0o444, locked(assign.num_cntrs_text)),
        "L3_MON/available_mbm_cntrs": File(
            0o444, lambda: model.command(assign.available_text)
        ),
        "L3_MON/mbm_assign_on_mkdir": File(
            0o644, lambda: model.command(assign.on_mkdir_text), on_mkdir
        ),
    }
    for event in assign.events:
        files[f"L3_MON/event_configs/{event}/event_filter"] = _event_filter(model, event)
    for event in assign.bmec.config_events:
        files[f"L3_MON/{event}_config"] = _bmec_file(model, event)
    return files


def _event_filter(model: Model, event: str) -> File:
    assign = model.assign
    return File(
        0o444 if assign.fixed else 0o644,  # 0644 only when mbm_cntr_configurable
        lambda: model.command(lambda: assign.filter_text(event)),
        lambda data, caller: model.command(
            lambda: assign.write_filter(event, data, list(model.groups())), data
        ),
    )


def _bmec_file(model: Model, event: str) -> File:
    """``mbm_{total,local}_bytes_config``; ENODEV through an fd kept open
    while mbm_event mode hides the file (a deactivated kernfs node)."""
    assign = model.assign

    def visible() -> None:
        if not assign.bmec_files:
            raise SimError(errno.ENODEV)

    def read() -> str:
        with model.locked():
            visible()
            return assign.bmec.text(event)

    def write(data: bytes, caller: Caller) -> None:
        with model.locked():
            visible()
            model.command(lambda: assign.bmec.write(event, data, list(model.groups())), data)

    return File(0o644, read, write)


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
            if topo.shareable_bits >> bit & 1:
                chars.append("X" if shared >> bit & 1 else "H")
            elif shared >> bit & 1:
                chars.append("S")
            elif excl >> bit & 1:
                chars.append("E")
            else:
                chars.append("0")
        out.append(f"{cache.id}=" + "".join(chars))
    return ";".join(out) + "\n"
