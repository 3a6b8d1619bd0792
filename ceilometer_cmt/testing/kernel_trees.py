"""Fixture trees that follow the kernel's formats: sysfs cache, resctrl, procfs.

``build_*`` write real files under a temporary root. :class:`KernelOps` does
to a resctrl fixture tree what the kernel does on mkdir/rmdir/tasks writes
(group files appear, a task sits in one control and one monitor group, ESRCH
for a task that does not exist), so the backend's lifecycle can run on plain
files; the FUSE simulator covers the same paths with real syscalls.

The trees are of a :class:`~ceilometer_cmt.simulator.topology.Topology`, the
simulator's presets (``get_topology("intel-2s")`` ...): one host description
for the fixture trees and the simulator.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from ceilometer_cmt.simulator.topology import MON_EVENTS, Topology

EVENTS = MON_EVENTS


def _write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="ascii") as f:
        f.write(text)


def build_sysfs(root: str, topo: Topology) -> str:
    """``devices/system/cpu/cpuN/cache/index{0,1,2,3}`` as the kernel lays them
    out: private L1d, L1i and L2 per CPU, ``index3`` from the topology's L3
    caches (:meth:`Topology.write_sysfs`, the simulator's own writer)."""
    for cpu in topo.cpus:
        base = os.path.join(root, "devices", "system", "cpu", f"cpu{cpu}", "cache")
        for idx, (level, ctype, size) in enumerate((
                (1, "Data", "48K"), (1, "Instruction", "32K"), (2, "Unified", "2048K"))):
            d = os.path.join(base, f"index{idx}")
            os.makedirs(d, exist_ok=True)
            for name, value in (("level", level), ("type", ctype), ("size", size),
                                ("shared_cpu_list", cpu), ("id", cpu)):
                with open(os.path.join(d, name), "w", encoding="ascii") as f:
                    f.write(f"{value}\n")
    topo.write_sysfs(root)
    return root


def _group_files(topo: Topology, path: str, ctrl: bool, features: tuple[str, ...]) -> None:
    """A group's files; ``mon_data`` has one ``mon_L3_XX`` per L3 and, with SNC,
    a ``mon_sub_L3_YY`` per node below it (``mkdir_mondata_subdir()``)."""
    os.makedirs(path, exist_ok=True)
    _write(os.path.join(path, "tasks"), "")
    _write(os.path.join(path, "cpus"), "0\n")
    _write(os.path.join(path, "cpus_list"), "\n")
    if ctrl:
        os.makedirs(os.path.join(path, "mon_groups"), exist_ok=True)
        masks = ";".join(f"{i}={topo.cbm_mask:x}" for i in topo.l3_ids)
        _write(os.path.join(path, "schemata"), f"    L3:{masks}\n")
        _write(os.path.join(path, "mode"), "shareable\n")
    for l3 in topo.l3_ids:
        ddir = os.path.join(path, "mon_data", f"mon_L3_{l3:02d}")
        for ev in features:
            _write(os.path.join(ddir, ev), "0\n")
            if topo.snc:
                for node in topo.domains_of(l3):
                    _write(os.path.join(ddir, f"mon_sub_L3_{node.id:02d}", ev), "0\n")


def build_resctrl(root: str, topo: Topology, features: tuple[str, ...] | None = None) -> str:
    """The root group and ``info/`` of ``topo``; numbers as the kernel prints
    them (``cbm_mask`` with ``%x``, the others with ``%u``/``%d``). A host of
    Linux 6.18 or later (``topo.assign_mode_file``) always has
    ``info/L3_MON/mbm_assign_mode``: ``[default]`` when its counters cannot be
    assigned; :func:`~ceilometer_cmt.testing.mbm_assign_tree.build_abmc_resctrl`
    writes the files of a host whose counters can. ``features`` default to
    the topology's events (arm64 MPAM: no ``mbm_local_bytes``)."""
    features = topo.mon_features if features is None else features
    info = os.path.join(root, "info")
    _write(os.path.join(info, "last_cmd_status"), "ok\n")
    _write(os.path.join(info, "L3", "cbm_mask"), f"{topo.cbm_mask:x}\n")
    _write(os.path.join(info, "L3", "num_closids"), f"{topo.num_closids}\n")
    _write(os.path.join(info, "L3", "min_cbm_bits"), f"{topo.min_cbm_bits}\n")
    _write(os.path.join(info, "L3", "sparse_masks"), f"{int(topo.sparse_masks)}\n")
    _write(os.path.join(info, "L3", "shareable_bits"), f"{topo.shareable_bits:x}\n")
    _write(os.path.join(info, "L3_MON", "num_rmids"), f"{topo.num_rmids}\n")
    _write(os.path.join(info, "L3_MON", "mon_features"), "".join(f + "\n" for f in features))
    _write(os.path.join(info, "L3_MON", "max_threshold_occupancy"),
           f"{topo.max_threshold_occupancy}\n")
    if topo.assign_mode_file and not topo.num_mbm_cntrs:
        _write(os.path.join(info, "L3_MON", "mbm_assign_mode"), "[default]\n")
    _group_files(topo, root, True, features)
    return root


def build_cpuinfo(proc_root: str, topo: Topology) -> str:
    """``<proc_root>/cpuinfo`` of the topology's architecture: on arm64 the
    lines of ``c_show()`` (arch/arm64/kernel/cpuinfo.c: ``CPU implementer``
    and MIDR fields, no ``vendor_id``), on x86 a ``vendor_id`` line per CPU
    (AuthenticAMD for the amd presets). Returns the path."""
    out = []
    for cpu in topo.cpus:
        if topo.arch == "aarch64":
            out.append(f"processor\t: {cpu}\nBogoMIPS\t: 2000.00\n"
                       "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics cpuid\n"
                       "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\n"
                       "CPU part\t: 0xd49\nCPU revision\t: 0\n\n")
        else:
            vendor = "AuthenticAMD" if topo.name.startswith("amd") else "GenuineIntel"
            out.append(f"processor\t: {cpu}\nvendor_id\t: {vendor}\n\n")
    path = os.path.join(proc_root, "cpuinfo")
    _write(path, "".join(out))
    return path


def set_value(group: str, l3: int, event: str, value: int | str,
              sub: int | None = None) -> None:
    """Write what the kernel would show in ``<group>/mon_data/mon_L3_<l3>/<event>``."""
    d = os.path.join(group, "mon_data", f"mon_L3_{l3:02d}")
    if sub is not None:
        d = os.path.join(d, f"mon_sub_L3_{sub:02d}")
    _write(os.path.join(d, event), f"{value}\n")


def build_proc(root: str, pid: int, cmdline: list[str], tids: list[int]) -> None:
    """``<root>/<pid>/cmdline`` and ``<root>/<pid>/task/<tid>/`` as procfs shows them."""
    base = os.path.join(root, str(pid))
    os.makedirs(base, exist_ok=True)
    with open(os.path.join(base, "cmdline"), "wb") as f:
        f.write(b"".join(a.encode() + b"\x00" for a in cmdline))
    for tid in tids:
        os.makedirs(os.path.join(base, "task", str(tid)), exist_ok=True)


def qemu_cmdline(domain_name: str) -> list[str]:
    return ["/usr/bin/qemu-system-x86_64", "-name",
            "guest=" + domain_name.replace(",", ",,") + ",debug-threads=on", "-S"]


class FileCalls:
    """The opens (attempts, failed ones too) and directory listings this process
    makes under ``root``, in order; filled while :func:`file_calls` is active.
    ``on_event(event, path)`` is called before each of them (``event`` is
    "open" or "list"); what it does itself is not recorded."""

    def __init__(self, root: str, on_event: Callable[[str, str], None] | None = None
                 ) -> None:
        self.root = root.rstrip(os.sep)
        self.on_event = on_event
        self.opens: list[str] = []
        self.listings: list[str] = []  # os.listdir and os.scandir

    def _seen(self, event: str, path: str) -> None:
        if path == self.root or path.startswith(self.root + os.sep):
            kind = "open" if event == "open" else "list"
            (self.opens if kind == "open" else self.listings).append(path)
            if self.on_event is not None:
                with unobserved():
                    self.on_event(kind, path)


_RECORDING: list[FileCalls] = []
_HOOKED: list[bool] = []
_QUIET: list[bool] = []


@contextlib.contextmanager
def unobserved() -> Iterator[None]:
    """File operations that :func:`file_calls` does not see: the kernel's side
    (:class:`KernelOps`), a test's own moves."""
    _QUIET.append(True)
    try:
        yield
    finally:
        _QUIET.pop()


_F = TypeVar("_F", bound=Callable[..., Any])


def _kernel_side(method: _F) -> _F:
    @functools.wraps(method)
    def run(*args: Any, **kw: Any) -> Any:
        with unobserved():
            return method(*args, **kw)
    return run  # type: ignore[return-value]


def _audit(event: str, args: tuple[object, ...]) -> None:
    if _RECORDING and not _QUIET and event in ("open", "os.listdir", "os.scandir") and args:
        path = args[0]
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if isinstance(path, str):
            for rec in _RECORDING:
                rec._seen(event, path)


@contextlib.contextmanager
def file_calls(root: str, on_event: Callable[[str, str], None] | None = None
               ) -> Iterator[FileCalls]:
    """Watch the process's opens and listings under ``root`` through a Python
    audit hook (PEP 578 events ``open``, ``os.listdir``, ``os.scandir``): the
    code under test runs unpatched on real files. A hook cannot be removed, so
    one is added once and stays idle outside this context."""
    if not _HOOKED:
        sys.addaudithook(_audit)
        _HOOKED.append(True)
    rec = FileCalls(root, on_event)
    _RECORDING.append(rec)
    try:
        yield rec
    finally:
        _RECORDING.remove(rec)


class KernelOps:
    """The kernel's side of mkdir/rmdir/tasks on a fixture tree (see module doc)."""

    def __init__(self, root: str, topo: Topology, proc_root: str = "/proc",
                 features: tuple[str, ...] | None = None) -> None:
        self.root = root
        self.topo = topo
        self.proc_root = proc_root
        self.features = topo.mon_features if features is None else features
        self.fail_mkdir: int | None = None  # errno to raise, e.g. ENOSPC
        self.status_on_fail = "Out of RMIDs"
        self.calls: list[tuple[str, str]] = []
        #: MBM counters per domain the writer keeps free (the daemon's reserve)
        self.kept: dict[int, int] = {}

    def kept_free(self) -> dict[int, int]:
        return dict(self.kept)

    def _status(self, text: str) -> None:
        _write(os.path.join(self.root, "info", "last_cmd_status"), text + "\n")

    @_kernel_side
    def mkdir(self, path: str) -> None:
        self.calls.append(("mkdir", path))
        if self.fail_mkdir is not None:
            self._status(self.status_on_fail)
            raise OSError(self.fail_mkdir, os.strerror(self.fail_mkdir), path)
        if os.path.basename(os.path.dirname(path)) != "mon_groups":
            raise OSError(errno.EPERM, "only monitor groups here", path)
        os.mkdir(path)
        _group_files(self.topo, path, False, self.features)
        self._status("ok")

    @_kernel_side
    def rmdir(self, path: str) -> None:
        self.calls.append(("rmdir", path))
        if not os.path.isdir(path):
            raise FileNotFoundError(errno.ENOENT, "no such group", path)
        shutil.rmtree(path)  # resctrl removes a group with its files

    def _all_groups(self) -> list[str]:
        groups = []
        for ctrl in [""] + [e for e in os.listdir(self.root)
                            if e not in ("info", "mon_groups", "mon_data")
                            and os.path.isdir(os.path.join(self.root, e))]:
            cdir = os.path.join(self.root, ctrl) if ctrl else self.root
            groups.append(cdir)
            mg = os.path.join(cdir, "mon_groups")
            if os.path.isdir(mg):
                groups.extend(os.path.join(mg, m) for m in os.listdir(mg))
        return groups

    @_kernel_side
    def write_tasks(self, tasks_path: str, tids: list[int],
                    domain_name: str = "") -> list[tuple[int, int]]:
        self.calls.append(("write", tasks_path))
        failures = []
        group = os.path.dirname(tasks_path)
        for tid in tids:
            self.calls.append(("write-tid", str(tid)))
            if not os.path.isdir(os.path.join(self.proc_root, str(tid))) and \
                    not any(os.path.isdir(os.path.join(self.proc_root, p, "task", str(tid)))
                            for p in os.listdir(self.proc_root) if p.isdigit()):
                self._status(f"No task {tid}")
                failures.append((tid, errno.ESRCH))
                continue
            for g in self._all_groups():
                if os.path.dirname(g).endswith("mon_groups") and g != group:
                    self._remove_tid(g, tid)
            with open(tasks_path, "a", encoding="ascii") as f:
                f.write(f"{tid}\n")
        self._status("ok")
        return failures

    @staticmethod
    def _remove_tid(group: str, tid: int) -> None:
        path = os.path.join(group, "tasks")
        with open(path, encoding="ascii") as f:
            lines = [ln for ln in f.read().split() if ln != str(tid)]
        with open(path, "w", encoding="ascii") as f:
            f.write("".join(ln + "\n" for ln in lines))
