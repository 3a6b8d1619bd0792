"""Looking at this host's processes from tests (leftovers, liveness).

Off every hot path and on the real ``/proc`` only, so psutil reads them
(doc/psutil.md); ``alive`` stays the plugin's own, which takes a proc_root.
"""

from __future__ import annotations

import os

import psutil

from ceilometer_cmt.linux.procfs import alive

__all__ = ["alive", "processes_mentioning"]


def processes_mentioning(text: str) -> list[int]:
    """Pids (other than ours) with an argument that contains ``text``."""
    me = os.getpid()
    found = []
    # a process that exits or is a zombie meanwhile comes with cmdline None
    for p in psutil.process_iter(["cmdline"], ad_value=None):
        argv = p.info["cmdline"]
        if p.pid != me and argv and any(text in arg for arg in argv):
            found.append(p.pid)
    return sorted(found)
