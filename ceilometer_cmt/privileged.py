"""The privileged operations, behind an oslo.privsep context.

The agent can then run as an unprivileged user: mkdir/rmdir of monitor groups
and writes to ``tasks`` happen in the privsep daemon (started the way
deployments start it: ``privsep-helper`` through sudo or rootwrap, or by root).
The daemon checks every request itself: the root must be a resctrl mount (or
the simulator) and the path a monitor group whose name carries the prefix.

perf counters (the perf backend) live in the daemon too, since privsep cannot
pass fds back: :mod:`ceilometer_cmt.perf_registry` holds them by handle and
checks events and threads against the daemon's own ``[cmt] sysfs_root`` and
``proc_root``; :class:`PrivsepCounters` is the agent's side.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Sequence

from oslo_config import cfg
from oslo_privsep import capabilities as caps
from oslo_privsep import priv_context

from ceilometer_cmt import options, perf_registry, resctrl
from ceilometer_cmt.perf_events import EventSpec

LOG = logging.getLogger(__name__)

# The daemon judges requests by its own configuration, never by the client's word.
options.register_opts(cfg.CONF)

cmt_pctxt = priv_context.PrivContext(
    "ceilometer_cmt",
    cfg_section="cmt_privsep",
    pypath=__name__ + ".cmt_pctxt",
    # DAC_OVERRIDE: resctrl files are root's; SYS_ADMIN/SYS_PTRACE: perf on
    # other users' processes (CAP_PERFMON is newer than the privsep table).
    capabilities=[caps.CAP_DAC_OVERRIDE, caps.CAP_SYS_ADMIN, caps.CAP_SYS_PTRACE],
)

_NAME = r"[A-Za-z0-9_.-]+"
_GROUP_RE = re.compile(rf"^(?:{_NAME}/)?mon_groups/({_NAME})$")
_verified: set[str] = set()


def _check(root: str, rel: str, prefix: str) -> str:
    own = cfg.CONF.cmt.resctrl_group_prefix
    if not own or prefix != own:
        raise PermissionError(f"refusing prefix {prefix!r}: this daemon owns only {own!r}")
    m = _GROUP_RE.match(rel)
    if not m or not m.group(1).startswith(prefix) or ".." in rel.split("/"):
        raise PermissionError(f"refusing resctrl path {rel!r} (prefix {prefix!r})")
    if root not in _verified:
        resctrl.verify_mount(root)
        _verified.add(root)
    return os.path.join(root, rel)


@cmt_pctxt.entrypoint
def mkdir_group(root: str, rel: str, prefix: str) -> None:
    os.mkdir(_check(root, rel, prefix))


@cmt_pctxt.entrypoint
def rmdir_group(root: str, rel: str, prefix: str) -> None:
    os.rmdir(_check(root, rel, prefix))


@cmt_pctxt.entrypoint
def write_group_tasks(root: str, rel: str, prefix: str, tids: list[int]) -> list[tuple[int, int]]:
    path = _check(root, rel, prefix)
    return resctrl.write_tasks(os.path.join(path, "tasks"), [int(t) for t in tids])


class PrivsepOps:
    """:class:`ceilometer_cmt.resctrl.ResctrlOps` through the privsep daemon."""

    def __init__(self, root: str, prefix: str) -> None:
        self.root = root
        self.prefix = prefix

    def _rel(self, path: str) -> str:
        return os.path.relpath(path, self.root)

    def mkdir(self, path: str) -> None:
        mkdir_group(self.root, self._rel(path), self.prefix)

    def rmdir(self, path: str) -> None:
        rmdir_group(self.root, self._rel(path), self.prefix)

    def write_tasks(self, tasks_path: str, tids: list[int]) -> list[tuple[int, int]]:
        rel = self._rel(os.path.dirname(tasks_path))
        return [(int(t), int(e)) for t, e in write_group_tasks(self.root, rel, self.prefix,
                                                                list(tids))]


# ---------------------------------------------------------------- perf counters

_registry: perf_registry.CounterRegistry | None = None
_registry_lock = threading.Lock()


def counter_registry() -> perf_registry.CounterRegistry:
    """The daemon's counters, judged by the daemon's own [cmt] sysfs/proc roots."""
    global _registry
    with _registry_lock:
        if _registry is None:
            _registry = perf_registry.CounterRegistry(
                cfg.CONF.cmt.sysfs_root, cfg.CONF.cmt.proc_root, raise_nofile=True)
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
    """:class:`ceilometer_cmt.perf_backend.CounterProvider` in the privsep daemon:
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
