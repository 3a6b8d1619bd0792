"""What the simulator needs to know about the host's tasks, from procfs.

Every function takes the proc root as a value.  A task is identified by its
tid *and* its start time (``/proc/TID/stat`` field 22, clock ticks since
boot), so that a reused tid is never mistaken for the task that was assigned.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from ceilometer_cmt.procfs import stat_start_time

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class TaskInfo:
    tid: int
    tgid: int
    ppid: int
    start: int  # clock ticks since boot
    uid: int  # real
    suid: int  # saved


def now_ticks() -> int:
    """Now, in the unit of ``TaskInfo.start``."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * CLK_TCK)


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return None


def task_start(proc_root: str, tid: int) -> int | None:
    """Start time of ``tid``, or None when no such task exists."""
    return stat_start_time(os.path.join(proc_root, str(tid), "stat"))


def task_info(proc_root: str, tid: int) -> TaskInfo | None:
    stat = _read(os.path.join(proc_root, str(tid), "stat"))
    status = _read(os.path.join(proc_root, str(tid), "status"))
    if stat is None or status is None:
        return None
    try:
        fields = stat[stat.rindex(")") + 2 :].split()
        ppid, start = int(fields[1]), int(fields[19])
        info: dict[str, list[str]] = {}
        for line in status.splitlines():
            key, _, rest = line.partition(":")
            info[key] = rest.split()
        uids = info["Uid"]
        return TaskInfo(tid, int(info["Tgid"][0]), ppid, start, int(uids[0]), int(uids[2]))
    except (ValueError, IndexError, KeyError):
        return None


def threads_of(proc_root: str, pid: int) -> list[int]:
    """Live tids of process ``pid`` (empty when it is gone)."""
    try:
        return sorted(int(t) for t in os.listdir(os.path.join(proc_root, str(pid), "task"))
                      if t.isdigit())
    except OSError:
        return []


def all_pids(proc_root: str) -> list[int]:
    try:
        return sorted(int(p) for p in os.listdir(proc_root) if p.isdigit())
    except OSError:
        return []


def comm_and_cmdline(proc_root: str, pid: int) -> tuple[str, str] | None:
    comm = _read(os.path.join(proc_root, str(pid), "comm"))
    cmdline = _read(os.path.join(proc_root, str(pid), "cmdline"))
    if comm is None or cmdline is None:
        return None
    return comm.rstrip("\n"), cmdline.replace("\0", " ").strip()
