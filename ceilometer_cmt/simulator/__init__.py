"""A FUSE imitation of the kernel's resctrl filesystem (``/sys/fs/resctrl``).

It lets the plugin's resctrl code run unchanged, with real syscalls, on hosts
without RDT.  The mount shows in ``/proc/self/mountinfo`` as fstype
``fuse.cmt-resctrl-sim`` (source ``resctrl``), never as ``resctrl``.

It is the oracle the plugin is checked against, so it imports nothing from
the plugin: it reads procfs and mountinfo with its own parsers
(tests/unit/simulator/test_independence.py keeps it so).

Modules, bottom up (each imports only modules above it in this list):

* inputs: :mod:`.topology` (host presets), :mod:`.timeline` (scenario time,
  load curves), :mod:`.scenario` (workload and fault file schema),
  :mod:`.procfs` (what it reads from ``/proc``), :mod:`.workload` (which host
  processes carry which load);
* the state machine: :mod:`.errors` (``SimError``), :mod:`.kstr` (the
  kernel's kstrtoul, kstrtobool, strsep, strim), :mod:`.groups` (groups,
  task entries), :mod:`.bmec` (BMEC event configuration), :mod:`.assign`
  (MBM counter assignment, ``mbm_event`` mode), :mod:`.layout` (fstype and
  which paths exist), :mod:`.rmids` (RMID/CLOSID allocation, limbo),
  :mod:`.writes` (cpus, schemata, mode writes and the kernel's parsers),
  :mod:`.tasks` (task membership), :mod:`.telemetry` (Intel AET PERF_PKG
  counters), :mod:`.counters` (what mon_data reads), :mod:`.model`
  (``Model``: the syscalls, under one mutex);
* serving it: :mod:`.tree` (path -> file with read/write), :mod:`.fs` (FUSE
  operations), :mod:`.control` (run-time control socket), :mod:`.runner`
  (``Simulator``, ``mount()``, ``simulate_main``).
"""

from ceilometer_cmt.simulator.runner import (
    FSTYPE,
    SUBTYPE,
    Simulator,
    fuse_missing_reason,
    mount,
    mount_fstype,
    simulate_main,
)

__all__ = [
    "FSTYPE",
    "SUBTYPE",
    "Simulator",
    "fuse_missing_reason",
    "mount",
    "mount_fstype",
    "simulate_main",
]
