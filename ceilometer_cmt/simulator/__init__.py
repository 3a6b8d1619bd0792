"""A FUSE imitation of the kernel's resctrl filesystem (``/sys/fs/resctrl``).

It lets the plugin's resctrl code run unchanged, with real syscalls, on hosts
without RDT.  The mount shows in ``/proc/self/mountinfo`` as fstype
``fuse.cmt-resctrl-sim`` (source ``resctrl``), never as ``resctrl``.

Modules: :mod:`.topology` (host presets), :mod:`.scenario` (workload and fault
file schema), :mod:`.model` (the state machine), :mod:`.tree` (paths),
:mod:`.fs` (FUSE operations), :mod:`.control` (run-time control socket),
:mod:`.runner` (``Simulator``, ``mount()``, ``simulate_main``).
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
