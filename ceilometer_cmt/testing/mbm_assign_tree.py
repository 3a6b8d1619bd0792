"""Fixture trees with MBM counter assignment (Linux 6.18, AMD ABMC), in the
kernel's formats, and the kernel's side of assignment writes on them.

:func:`build_abmc_resctrl` adds to a :func:`~ceilometer_cmt.testing.kernel_trees.build_resctrl`
tree what ``resctrl_l3_mon_resource_init()`` (fs/resctrl/monitor.c) registers
when counters are assignable: ``info/L3_MON/{mbm_assign_mode,num_mbm_cntrs,
available_mbm_cntrs,mbm_assign_on_mkdir}``,
``info/L3_MON/event_configs/<event>/event_filter`` and each group's
``mbm_L3_assignments``; in ``default`` mode the BMEC
``mbm_{total,local}_bytes_config`` files instead, and ``mon_features`` lists
them after their events. A plain file cannot fail
a read with EINVAL as the kernel's files do outside ``mbm_event`` mode, so
those files are left out then (the readers give None either way).

:class:`AssignKernelOps` is :class:`~ceilometer_cmt.testing.kernel_trees.KernelOps`
plus what the kernel does on assignment: mkdir assigns total then local in
every domain while ``mbm_assign_on_mkdir`` is 1 and counters last
(``rdtgroup_assign_cntrs()``, mkdir never fails for want of one), rmdir frees
them, and ``write_assignments`` applies ``mbm_L3_assignments`` lines as
``mbm_L3_assignments_write()`` does (ENOSPC "Failed to allocate counter for
<event> in domain <id>", ENOENT "Invalid event", EINVAL for the rest). The
counters in use are counted from the groups' files, so a test may also write
them by hand (:func:`set_assignments`).

This is a fixture, not the plugin's parser: it writes the files with its own
code, and the FUSE simulator (``amd-abmc``) covers the same files with real
syscalls.
"""

from __future__ import annotations

import errno
import os

from ceilometer_cmt.simulator.topology import Topology
from ceilometer_cmt.testing.kernel_trees import (
    EVENTS,
    KernelOps,
    _kernel_side,
    _write,
    build_resctrl,
)

MBM_EVENTS = ("mbm_total_bytes", "mbm_local_bytes")
#: ``event_filter_show()`` of the defaults: total counts every transaction
#: (0x7f), local the local ones (0x15), ``mbm_transactions[]`` order
DEFAULT_FILTERS = {
    "mbm_total_bytes": "local_reads,remote_reads,local_non_temporal_writes,"
                       "remote_non_temporal_writes,local_reads_slow_memory,"
                       "remote_reads_slow_memory,dirty_victim_writes_all",
    "mbm_local_bytes": "local_reads,local_non_temporal_writes,local_reads_slow_memory",
}
DEFAULT_BMEC = {"mbm_total_bytes": 0x7F, "mbm_local_bytes": 0x15}
ASSIGNMENTS = "mbm_L3_assignments"


def _l3_mon(root: str, name: str) -> str:
    return os.path.join(root, "info", "L3_MON", name)


def _domain_list(values: dict[int, int], fmt: str = "{}") -> str:
    """``"%d=%d"`` per domain joined by ``;`` and a newline."""
    return ";".join(f"{d}={fmt.format(v)}" for d, v in sorted(values.items())) + "\n"


def mbm_events(topo: Topology) -> tuple[str, ...]:
    """The MBM events the host has (arm64 MPAM: ``mbm_total_bytes`` only)."""
    return tuple(ev for ev in MBM_EVENTS if ev in topo.mon_features)


def assignments_text(topo: Topology, held: dict[str, set[int]]) -> str:
    """``mbm_L3_assignments_show()``: one line per MBM event of the host."""
    return "".join(
        f"{ev}:" + ";".join(f"{d}={'e' if d in held.get(ev, set()) else '_'}"
                            for d in sorted(topo.l3_ids)) + "\n"
        for ev in mbm_events(topo))


def set_assignments(group: str, topo: Topology, held: dict[str, set[int]]) -> None:
    """Write a group's ``mbm_L3_assignments``: ``held`` = event -> domains with a counter."""
    _write(os.path.join(group, ASSIGNMENTS), assignments_text(topo, held))


def build_abmc_resctrl(root: str, topo: Topology, *, num_cntrs: int = 32,
                       mode: str = "mbm_event", fixed: bool | None = None,
                       on_mkdir: bool = True, bmec: bool = True) -> str:
    """A resctrl tree of a 6.18 AMD host with ``num_cntrs`` counters per
    domain, booted in ``mode``; the default group holds total and local in
    every domain when booted in ``mbm_event`` mode (``rdt_get_tree()``).
    ``fixed``: ``CONFIG_RESCTRL_ASSIGN_FIXED`` or ``mbm_cntr_assign_fixed``
    (only the current mode listed; default: the topology's, as on arm64
    MPAM, whose only MBM event is ``mbm_total_bytes``)."""
    fixed = topo.assign_fixed if fixed is None else fixed
    build_resctrl(root, topo)
    other = "default" if mode == "mbm_event" else "mbm_event"
    _write(_l3_mon(root, "mbm_assign_mode"), f"[{mode}]\n" + ("" if fixed else f"{other}\n"))
    _write(_l3_mon(root, "num_mbm_cntrs"),
           _domain_list({d: num_cntrs for d in topo.l3_ids}))
    if mode == "mbm_event":
        _write(_l3_mon(root, "mbm_assign_on_mkdir"), f"{int(on_mkdir)}\n")
        for ev in mbm_events(topo):
            _write(os.path.join(root, "info", "L3_MON", "event_configs", ev, "event_filter"),
                   DEFAULT_FILTERS[ev] + "\n")
        set_assignments(root, topo, {ev: set(topo.l3_ids) for ev in mbm_events(topo)})
        recount(root, topo, num_cntrs)
    elif bmec:
        for ev, mask in DEFAULT_BMEC.items():
            _write(_l3_mon(root, f"{ev}_config"),
                   _domain_list({d: mask for d in topo.l3_ids}, "0x{:02x}"))
        # rdt_mon_features_show(): "<event>_config" after each configurable
        # event while counters are not assigned
        _write(_l3_mon(root, "mon_features"), "".join(
            f"{ev}\n" + (f"{ev}_config\n" if ev in DEFAULT_BMEC else "") for ev in EVENTS))
    return root


def _groups(root: str) -> list[str]:
    out = []
    for ctrl in [""] + sorted(e for e in os.listdir(root)
                              if e not in ("info", "mon_groups", "mon_data")
                              and os.path.isdir(os.path.join(root, e))):
        cdir = os.path.join(root, ctrl) if ctrl else root
        out.append(cdir)
        mg = os.path.join(cdir, "mon_groups")
        if os.path.isdir(mg):
            out.extend(os.path.join(mg, m) for m in sorted(os.listdir(mg)))
    return out


def held_by(group: str) -> dict[str, set[int]]:
    """The domains each MBM event of ``group`` holds a counter in, from its file."""
    path = os.path.join(group, ASSIGNMENTS)
    out: dict[str, set[int]] = {ev: set() for ev in MBM_EVENTS}
    if not os.path.exists(path):
        return out
    with open(path, encoding="ascii") as f:
        for line in f.read().splitlines():
            ev, _, rest = line.partition(":")
            for item in filter(None, rest.split(";")):
                dom, _, state = item.partition("=")
                if state == "e":
                    out.setdefault(ev, set()).add(int(dom))
    return out


def in_use(root: str, topo: Topology) -> dict[int, int]:
    """Counters held per domain, over every group's ``mbm_L3_assignments``."""
    used = dict.fromkeys(topo.l3_ids, 0)
    for group in _groups(root):
        for doms in held_by(group).values():
            for d in doms:
                used[d] += 1
    return used


def recount(root: str, topo: Topology, num_cntrs: int) -> dict[int, int]:
    """Write ``available_mbm_cntrs`` from the counters the groups hold."""
    free = {d: num_cntrs - n for d, n in in_use(root, topo).items()}
    _write(_l3_mon(root, "available_mbm_cntrs"), _domain_list(free))
    return free


class AssignKernelOps(KernelOps):
    """:class:`KernelOps` on a :func:`build_abmc_resctrl` tree, with counters."""

    def __init__(self, root: str, topo: Topology, proc_root: str = "/proc",
                 num_cntrs: int = 32) -> None:
        super().__init__(root, topo, proc_root)
        self.num_cntrs = num_cntrs

    def _on_mkdir(self) -> bool:
        path = _l3_mon(self.root, "mbm_assign_on_mkdir")
        if not os.path.exists(path):
            return False
        with open(path, encoding="ascii") as f:
            return f.read().strip() == "1"

    def _free(self) -> dict[int, int]:
        return recount(self.root, self.topo, self.num_cntrs)

    @_kernel_side
    def mkdir(self, path: str) -> None:
        super().mkdir(path)
        if not os.path.exists(_l3_mon(self.root, "available_mbm_cntrs")):
            return  # default mode: no assignments file
        held: dict[str, set[int]] = {ev: set() for ev in MBM_EVENTS}
        failed = []
        if self._on_mkdir():
            for ev in mbm_events(self.topo):  # rdtgroup_assign_cntrs(): total, then local
                for d in sorted(self.topo.l3_ids):
                    if self._free()[d] <= 0:
                        failed.append(f"Failed to allocate counter for {ev} in domain {d}")
                        if self.topo.assign_fixed:
                            continue  # Linux 7.2 carries on over the domains
                        break
                    held[ev].add(d)
                    set_assignments(path, self.topo, held)
        set_assignments(path, self.topo, held)
        self._free()
        if failed:
            self._status("\n".join(failed))

    @_kernel_side
    def rmdir(self, path: str) -> None:
        super().rmdir(path)
        self._free()

    @_kernel_side
    def write_assignments(self, group_path: str, lines: list[str]) -> list[tuple[str, int]]:
        self.calls.append(("assign", group_path))
        failures = []
        for line in lines:
            self.calls.append(("assign-line", line))
            err = self._apply(group_path, line if line.endswith("\n") else line + "\n")
            if err:
                failures.append((line, err))
            else:
                self._status("ok")
        return failures

    def _apply(self, group: str, data: str) -> int:
        """``mbm_L3_assignments_write()`` of one write: 0 or the errno."""
        if not os.path.exists(os.path.join(group, ASSIGNMENTS)):
            self._status("mbm_event mode is not enabled")
            return errno.EINVAL
        held = held_by(group)
        try:
            for line in data[:-1].split("\n"):
                ev, _, rest = line.partition(":")
                if ev not in mbm_events(self.topo):
                    self._status(f"Invalid event {ev}")
                    return errno.ENOENT
                for item in filter(None, rest.split(";")):
                    dom_s, _, state = item.strip().partition("=")
                    doms = sorted(self.topo.l3_ids) if dom_s.startswith("*") \
                        else [int(dom_s)] if dom_s.isdigit() else None
                    if doms is None:
                        self._status("Missing domain id")
                        return errno.EINVAL
                    if any(d not in self.topo.l3_ids for d in doms):
                        self._status(f"Invalid domain id {doms[0]}")
                        return errno.EINVAL
                    shown = "*" if dom_s.startswith("*") else str(doms[0])
                    if state not in ("e", "_"):
                        self._status(f"Assign operation '{ev}:{shown}={state}' failed")
                        return errno.EINVAL
                    for d in doms:
                        if state == "_":
                            held[ev].discard(d)
                        elif d not in held[ev]:
                            if self._free()[d] <= 0:
                                self._status(f"Failed to allocate counter for {ev} in domain "
                                             f"{d}\nAssign operation '{ev}:{shown}=e' failed")
                                return errno.ENOSPC
                            held[ev].add(d)
                        set_assignments(group, self.topo, held)
                    if dom_s.startswith("*"):
                        break  # the kernel looks no further on this line
            return 0
        finally:
            set_assignments(group, self.topo, held)
            self._free()


def set_affinity(proc_root: str, pid: int, tid: int, cpus: str) -> None:
    """Write ``<proc_root>/<pid>/task/<tid>/status`` with the thread's CPU
    affinity as ``proc_pid_status()`` (fs/proc/array.c) shows it: the
    ``Cpus_allowed`` mask line, then ``Cpus_allowed_list`` in cpu list syntax."""
    mask = 0
    for part in cpus.split(","):
        lo, _, hi = part.partition("-")
        for cpu in range(int(lo), int(hi or lo) + 1):
            mask |= 1 << cpu
    _write(os.path.join(proc_root, str(pid), "task", str(tid), "status"),
           f"Name:\tqemu-kvm\nState:\tS (sleeping)\nTgid:\t{pid}\nPid:\t{tid}\n"
           f"Cpus_allowed:\t{mask:x}\nCpus_allowed_list:\t{cpus}\n"
           "Mems_allowed_list:\t0-1\n")
