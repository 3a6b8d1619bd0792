"""The privileged operations, behind an oslo.privsep context.

The agent can then run as an unprivileged user: mkdir/rmdir of monitor groups,
writes to ``tasks`` and MBM counter assignments (``mbm_L3_assignments``)
happen in the privsep daemon, started by ``ceilometer-cmt-privsep-helper``
(:mod:`ceilometer_cmt.privsep.helper`) through sudo with the daemon's own
root-owned config file.

The daemon takes names, never paths, and judges them by its own config
only (:mod:`ceilometer_cmt.privsep.rules`, :mod:`ceilometer_cmt.privsep.resctrl_root`):
its own ``[cmt] resctrl_root``, opened once and checked to be resctrl, every
name resolved beneath it, only monitor groups with its own prefix, a reserve of
RMIDs it never hands out, a reserve of free MBM counters per domain it never
takes, and only threads of the named guest's qemu.

perf counters (the perf backend) live in the daemon too, since privsep cannot
pass fds back: :mod:`ceilometer_cmt.privsep.perf_registry` holds them by handle and
checks events and threads by the same rules; :class:`PrivsepCounters` is the
agent's side.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence

from oslo_config import cfg
from oslo_privsep import capabilities as caps
from oslo_privsep import priv_context

from ceilometer_cmt import options
from ceilometer_cmt.backends.perf.abi import EventSpec
from ceilometer_cmt.backends.resctrl import fs
from ceilometer_cmt.privsep import perf_registry
from ceilometer_cmt.privsep.resctrl_root import ResctrlRoot
from ceilometer_cmt.privsep.rules import QemuRule, refuse

LOG = logging.getLogger(__name__)

# The daemon judges requests by its own configuration, never by the client's word.
options.register_opts(cfg.CONF)

cmt_pctxt = priv_context.PrivContext(
    "ceilometer_cmt",
    cfg_section=options.PRIVSEP_GROUP,
    pypath=__name__ + ".cmt_pctxt",
    # DAC_OVERRIDE: resctrl files are root's; SYS_ADMIN/SYS_PTRACE: perf on
    # other users' processes (CAP_PERFMON is newer than the privsep table), and
    # /proc/<pid>/exe of the qemu process.
    capabilities=[caps.CAP_DAC_OVERRIDE, caps.CAP_SYS_ADMIN, caps.CAP_SYS_PTRACE],
)
options.register_privsep_opts(cfg.CONF)

_state_lock = threading.Lock()
_resctrl: ResctrlRoot | None = None


def qemu_rule() -> QemuRule:
    """Who may be placed or counted, from the daemon's own config."""
    c = cfg.CONF
    return QemuRule(c.cmt.libvirt_pid_dir, c.cmt.proc_root,
                    tuple(e.strip() for e in c.cmt_privsep.emulators if e.strip()),
                    tuple(u.strip() for u in c.cmt_privsep.qemu_users if u.strip()))


def daemon_resctrl() -> ResctrlRoot:
    """The daemon's resctrl root, made once from the daemon's own config."""
    global _resctrl
    with _state_lock:
        if _resctrl is None:
            c = cfg.CONF
            prefix = c.cmt.resctrl_group_prefix or ""
            if not fs.PREFIX_RE.fullmatch(prefix):
                raise refuse("config", f"this daemon's [cmt] resctrl_group_prefix "
                                       f"{prefix!r} is not usable")
            _resctrl = ResctrlRoot(c.cmt.resctrl_root, prefix, qemu_rule(),
                                   allow_simulator=c.cmt_privsep.allow_simulator,
                                   rmid_reserve=c.cmt_privsep.rmid_reserve,
                                   counter_reserve=c.cmt_privsep.mbm_counter_reserve)
        return _resctrl


@cmt_pctxt.entrypoint
def mkdir_group(ctrl: str, uuid: str) -> None:
    """Make monitor group ``<prefix><uuid>`` in control group ``ctrl`` ("" = default)."""
    daemon_resctrl().mkdir(ctrl, uuid)


@cmt_pctxt.entrypoint
def rmdir_group(ctrl: str, name: str) -> None:
    """Remove our monitor group ``name`` (it carries the prefix) of ``ctrl``."""
    daemon_resctrl().rmdir(ctrl, name)


@cmt_pctxt.entrypoint
def write_group_tasks(ctrl: str, uuid: str, domain_name: str,
                      tids: list[int]) -> list[tuple[int, int]]:
    """Write threads of ``domain_name``'s qemu to monitor group ``<prefix><uuid>``."""
    return daemon_resctrl().write_tasks(ctrl, uuid, domain_name, tids)


@cmt_pctxt.entrypoint
def write_group_assignments(ctrl: str, uuid: str, lines: list[str]) -> list[tuple[str, int]]:
    """Write MBM counter assignment lines (``mbm_total_bytes:0=e;1=_``) to the
    ``mbm_L3_assignments`` of monitor group ``<prefix><uuid>`` in ``ctrl``;
    (line, errno) of the lines the kernel refused. Nothing is written, and
    ENOSPC raised with the daemon's text, when the lines would take the
    counters kept free for other tools (``[cmt_privsep] mbm_counter_reserve``)."""
    return daemon_resctrl().write_assignments(ctrl, uuid, lines)


@cmt_pctxt.entrypoint
def mbm_counters_kept_free() -> list[tuple[int, int]]:
    """(L3 domain, MBM counters) this daemon keeps free for other tools
    (``[cmt_privsep] mbm_counter_reserve``), so that the agent plans within
    them instead of being refused; empty outside ``mbm_event`` mode. Pairs,
    not a dict: privsep's msgpack channel takes string map keys only."""
    available, kept = daemon_resctrl().counters()
    return sorted(kept.items()) if available is not None else []


class PrivsepOps:
    """:class:`ceilometer_cmt.backends.resctrl.fs.ResctrlOps` through the privsep daemon: the
    paths the backend uses become names; the daemon finds them beneath its own root."""

    def __init__(self, root: str, prefix: str) -> None:
        self.root = root
        self.prefix = prefix

    def _names(self, group: str) -> tuple[str, str]:
        """(control group, monitor group name) of a monitor group path."""
        parts = os.path.relpath(group, self.root).split(os.sep)
        if len(parts) == 2 and parts[0] == "mon_groups":
            return "", parts[1]
        if len(parts) == 3 and parts[1] == "mon_groups":
            return parts[0], parts[2]
        raise ValueError(f"{group} is not a monitor group under {self.root}")

    def _uuid(self, name: str) -> str:
        return name[len(self.prefix):] if name.startswith(self.prefix) else name

    def mkdir(self, path: str) -> None:
        ctrl, name = self._names(path)
        mkdir_group(ctrl, self._uuid(name))

    def rmdir(self, path: str) -> None:
        rmdir_group(*self._names(path))

    def write_tasks(self, tasks_path: str, tids: list[int],
                    domain_name: str = "") -> list[tuple[int, int]]:
        ctrl, name = self._names(os.path.dirname(tasks_path))
        return [(int(t), int(e)) for t, e in write_group_tasks(
            ctrl, self._uuid(name), domain_name, [int(t) for t in tids])]

    def write_assignments(self, group_path: str, lines: list[str]) -> list[tuple[str, int]]:
        ctrl, name = self._names(group_path)
        return [(str(line), int(e)) for line, e in write_group_assignments(
            ctrl, self._uuid(name), [str(line) for line in lines])]

    def kept_free(self) -> dict[int, int]:
        return {int(d): int(n) for d, n in mbm_counters_kept_free()}


# ---------------------------------------------------------------- perf counters

_registry: perf_registry.CounterRegistry | None = None
_registry_lock = threading.Lock()


def counter_registry() -> perf_registry.CounterRegistry:
    """The daemon's counters, judged by the daemon's own config."""
    global _registry
    with _registry_lock:
        if _registry is None:
            _registry = perf_registry.CounterRegistry(
                cfg.CONF.cmt.sysfs_root, qemu_rule(), raise_nofile=True)
        return _registry


@cmt_pctxt.entrypoint
def perf_open(events: list[list[int]], pid: int, tid: int, domain_name: str) -> list[int]:
    return counter_registry().open(events, pid, tid, domain_name)


@cmt_pctxt.entrypoint
def perf_read(handles: list[int]) -> bytes:
    return counter_registry().read(handles)


@cmt_pctxt.entrypoint
def perf_close(handles: list[int]) -> None:
    counter_registry().close(handles)


@cmt_pctxt.entrypoint
def perf_probe(events: list[list[int]]) -> None:
    counter_registry().probe(events)


def _wire(specs: Sequence[EventSpec]) -> list[list[int]]:
    return [list(perf_registry.to_wire(s)) for s in specs]


class PrivsepCounters:
    """:class:`~ceilometer_cmt.backends.perf.counter_providers.CounterProvider` in the
    privsep daemon:
    handles are the daemon's, one round trip per thread opened and one per cycle
    for all reads."""

    def open(self, specs: Sequence[EventSpec], pid: int, tid: int,
             domain_name: str) -> list[int]:
        return [int(h) for h in perf_open(_wire(specs), int(pid), int(tid), domain_name)]

    def read(self, handles: Sequence[int]) -> bytes:
        return bytes(perf_read(list(handles))) if handles else b""

    def close(self, handles: Sequence[int]) -> None:
        if not handles:
            return
        try:
            perf_close(list(handles))
        except Exception as e:  # the daemon is gone: so are its fds
            LOG.debug("perf_close through privsep failed: %s", e)

    def probe(self, specs: Sequence[EventSpec]) -> None:
        perf_probe(_wire(specs))
