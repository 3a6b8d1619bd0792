"""The kernel's MBM counter assignment files (Linux 6.18 ``mbm_event`` mode),
read and written as raw text through a resctrl mount, as another tool would:
the tests' oracle, independent of the plugin's parsers
(Documentation/filesystems/resctrl.rst: ``mbm_L3_assignments``,
``available_mbm_cntrs``; a value without a counter reads ``Unassigned``).
"""

from __future__ import annotations

import os


def kernel_assignments(path: str) -> dict[str, dict[int, bool]]:
    """``mbm_L3_assignments`` of a group: event -> {domain: assigned}."""
    with open(os.path.join(path, "mbm_L3_assignments"), encoding="ascii") as f:
        out = {}
        for line in f.read().splitlines():
            event, _, doms = line.partition(":")
            out[event] = {int(d): s != "_" for d, _, s in
                          (item.partition("=") for item in doms.split(";"))}
        return out


def kernel_value(path: str, event: str, dom: int = 0) -> str:
    """A group's value file as the kernel shows it (a number, ``Unassigned`` ...)."""
    with open(os.path.join(path, "mon_data", f"mon_L3_{dom:02d}", event),
              encoding="ascii") as f:
        return f.read().strip()


def kernel_available(root: str) -> dict[int, int]:
    """``info/L3_MON/available_mbm_cntrs``: domain -> free counters."""
    with open(os.path.join(root, "info", "L3_MON", "available_mbm_cntrs"),
              encoding="ascii") as f:
        return {int(d): int(n) for d, _, n in
                (item.partition("=") for item in f.read().strip().split(";"))}


def write_assignment(path: str, line: str) -> None:
    """Another tool (as root, through the mount) writes one line."""
    fd = os.open(os.path.join(path, "mbm_L3_assignments"), os.O_WRONLY)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)
