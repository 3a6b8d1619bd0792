"""Intel AET (``PERF_PKG``, Linux 7.0) files added to a resctrl fixture tree of
:mod:`ceilometer_cmt.testing.kernel_trees`, in the kernel's formats.

- ``info/PERF_PKG_MON/num_rmids`` (``"%d\\n"``) and ``mon_features`` (one
  event per line, ``mon_event_all[]`` order);
- ``<group>/mon_data/mon_PERF_PKG_<XX>/<event>``, two digits per package;
- ``core_energy`` and ``activity`` are u64 fixed point with 18 fraction bits,
  shown as ``print_event_value()`` of ``fs/resctrl/ctrlmondata.c`` does; the
  other events as ``"%llu\\n"``; ``Unavailable``/``Error`` when there is none.

:class:`PerfPkgKernelOps` is :class:`~kernel_trees.KernelOps` whose new
monitor groups also get their ``mon_PERF_PKG_XX`` files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from fractions import Fraction

from ceilometer_cmt.simulator.topology import Topology
from ceilometer_cmt.testing.kernel_trees import KernelOps, unobserved

#: ``mon_event_all[]``'s PERF_PKG events, in event-id order
PERF_PKG_EVENTS = ("core_energy", "activity", "stalls_llc_hit", "c1_res",
                   "unhalted_core_cycles", "stalls_llc_miss", "c6_res",
                   "unhalted_ref_cycles", "uops_retired")
#: ``binary_bits`` of the fixed-point events (``EVT(..., 18)`` in intel_aet.c)
BINARY_BITS = {"core_energy": 18, "activity": 18}
#: ``decplaces[]`` of ctrlmondata.c: ceil(binary_bits * log10(2)); [0] = 1
DECPLACES = (1, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 6, 6, 6, 7, 7, 7, 7, 8, 8,
             8, 9)
#: PERF_PKG_MON's num_rmids on Clearwater Forest (``.num_rmid = 576``)
CWF_RMIDS = 576


def print_event_value(binary_bits: int, val: int) -> str:
    """What ``print_event_value()`` shows for the u64 ``val``."""
    frac = val & ((1 << binary_bits) - 1)
    frac *= 10 ** DECPLACES[binary_bits]
    frac += 1 << (binary_bits - 1)
    frac >>= binary_bits
    frac &= (1 << 64) - 1
    return f"{val >> binary_bits}.{frac:0{DECPLACES[binary_bits]}d}\n"


def raw_fixed(value: Fraction | int | float, binary_bits: int = 18) -> int:
    """The register value of ``value`` (Joules, Farads) in fixed point, truncated."""
    return int(Fraction(value) * (1 << binary_bits))


def _write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="ascii") as f:
        f.write(text)


def package_dir(pkg: int) -> str:
    return f"mon_PERF_PKG_{pkg:02d}"


def add_group_files(group: str, packages: Sequence[int],
                    features: Sequence[str] = PERF_PKG_EVENTS) -> None:
    """A group's ``mon_data/mon_PERF_PKG_XX/<event>`` files, all at 0."""
    for pkg in packages:
        for event in features:
            set_telemetry(group, pkg, event, 0)


def build_perf_pkg(root: str, packages: Sequence[int] = (0, 1), *,
                   num_rmids: int = CWF_RMIDS,
                   features: Sequence[str] = PERF_PKG_EVENTS) -> str:
    """Add AET to the resctrl fixture tree at ``root`` (its info and the
    default group's files)."""
    info = os.path.join(root, "info", "PERF_PKG_MON")
    _write(os.path.join(info, "num_rmids"), f"{num_rmids}\n")
    _write(os.path.join(info, "mon_features"), "".join(f"{e}\n" for e in features))
    add_group_files(root, packages, features)
    return root


def set_telemetry(group: str, pkg: int, event: str, value: int | str) -> None:
    """Write what the kernel shows in ``<group>/mon_data/mon_PERF_PKG_<pkg>/<event>``:
    ``value`` is the register (fixed point for core_energy and activity), or
    a word such as ``Unavailable``."""
    if isinstance(value, str):
        text = f"{value}\n"
    elif event in BINARY_BITS:
        text = print_event_value(BINARY_BITS[event], value)
    else:
        text = f"{value}\n"
    _write(os.path.join(group, "mon_data", package_dir(pkg), event), text)


class PerfPkgKernelOps(KernelOps):
    """:class:`KernelOps` on a tree with AET: new groups get the PERF_PKG files."""

    def __init__(self, root: str, topo: Topology, proc_root: str = "/proc",
                 packages: Sequence[int] = (0, 1),
                 perf_pkg_features: Sequence[str] = PERF_PKG_EVENTS) -> None:
        super().__init__(root, topo, proc_root)
        self.packages = tuple(packages)
        self.perf_pkg_features = tuple(perf_pkg_features)

    def mkdir(self, path: str) -> None:
        super().mkdir(path)
        with unobserved():
            add_group_files(path, self.packages, self.perf_pkg_features)
