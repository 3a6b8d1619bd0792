"""Looking at this host's processes from tests (leftovers, liveness)."""

from __future__ import annotations

import os

from ceilometer_cmt.linux.procfs import alive

__all__ = ["alive", "processes_mentioning"]


def processes_mentioning(text: str) -> list[int]:
    """Pids (other than ours) whose cmdline contains ``text``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found

