"""Where an instance's threads may run: their CPU affinity mapped to the
host's L3 domains (``mbm_event`` mode assigns MBM counters per domain,
:mod:`mbm_counters`).

A thread's CPUs are the ``Cpus_allowed_list`` of
``/proc/<pid>/task/<tid>/status`` (``proc_pid_status()``, fs/proc/array.c);
a CPU's L3 domain comes from the host's cache topology (``shared_cpu_list``
of the L3 caches, :class:`~ceilometer_cmt.readings.HostCache`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from ceilometer_cmt.linux.sysfs_cache import parse_cpu_list
from ceilometer_cmt.readings import HostCache

#: the line of ``/proc/<pid>/task/<tid>/status`` with the thread's CPU
#: affinity in cpu list syntax (``proc_pid_status()``, fs/proc/array.c)
CPUS_ALLOWED = "Cpus_allowed_list:"


def cpu_domains(host: HostCache) -> dict[int, int]:
    """cpu -> the id of its L3 domain, from the host's cache topology."""
    out: dict[int, int] = {}
    for dom in host.domains:
        try:
            cpus = parse_cpu_list(dom.cpus)
        except ValueError:
            continue
        for cpu in cpus:
            out[cpu] = dom.id
    return out


def thread_cpus(proc_root: str, pid: int, tid: int) -> list[int] | None:
    """The CPUs thread ``tid`` of ``pid`` may run on; None when unknown."""
    path = os.path.join(proc_root, str(pid), "task", str(tid), "status")
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(CPUS_ALLOWED):
                    return parse_cpu_list(line[len(CPUS_ALLOWED):])
    except (OSError, ValueError):
        return None
    return None


def affinity_domains(proc_root: str, pid: int, tids: Sequence[int],
                     cpu_map: Mapping[int, int]) -> frozenset[int] | None:
    """The L3 domains the threads may run in: the union over the threads
    (a vCPU pinned to one socket, the emulator threads to another, both
    count); None when no thread's affinity is known."""
    doms: set[int] = set()
    for tid in tids:
        cpus = thread_cpus(proc_root, pid, tid)
        if cpus is not None:
            doms.update(cpu_map[c] for c in cpus if c in cpu_map)
    return frozenset(doms) if doms else None
