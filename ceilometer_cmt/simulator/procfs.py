"""What the simulator reads from the host's procfs: tasks and mounts.

Every function takes the proc root (or the mountinfo path) as a value.  A task
is identified by its tid *and* its start time (``/proc/TID/stat`` field 22,
clock ticks since boot), so that a reused tid is never mistaken for the task
that was assigned.

The parsers here are the simulator's own, written from the kernel's formats
(``Documentation/filesystems/proc.rst``), not the plugin's: the simulator is
the oracle the plugin is checked against and must not share its bugs.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

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


def stat_fields(stat: str) -> list[str]:
    """The fields of a ``/proc/PID/stat`` line from field 3 (state) on.

    Field 2 is ``(comm)``, and comm may hold spaces and parentheses: the
    fields go on after the *last* ``)``.  ``stat_fields(s)[0]`` is field 3,
    so field N is ``[N - 3]``: ppid (4) is ``[1]``, starttime (22) ``[19]``.
    """
    close = stat.rfind(")")
    return stat[close + 1 :].split() if close >= 0 else []


def _stat_field(fields: list[str], number: int) -> int:
    return int(fields[number - 3])


def task_start(proc_root: str, tid: int) -> int | None:
    """Start time of ``tid``, or None when no such task exists."""
    stat = _read(os.path.join(proc_root, str(tid), "stat"))
    if stat is None:
        return None
    try:
        return _stat_field(stat_fields(stat), 22)
    except (ValueError, IndexError):
        return None


def task_info(proc_root: str, tid: int) -> TaskInfo | None:
    stat = _read(os.path.join(proc_root, str(tid), "stat"))
    status = _read(os.path.join(proc_root, str(tid), "status"))
    if stat is None or status is None:
        return None
    try:
        fields = stat_fields(stat)
        ppid, start = _stat_field(fields, 4), _stat_field(fields, 22)
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


def _unmangle(field: bytes) -> bytes:
    r"""Undo the kernel's ``mangle()`` of a mountinfo field: space, tab,
    newline and backslash are written as ``\ooo`` (three octal digits)."""
    out = bytearray()
    i = 0
    while i < len(field):
        octal = field[i + 1 : i + 4]
        if field[i : i + 1] == b"\\" and len(octal) == 3 and all(48 <= c <= 55 for c in octal):
            out.append(int(octal, 8) & 0xFF)
            i += 4
        else:
            out.append(field[i])
            i += 1
    return bytes(out)


def fstype_at(mountinfo: bytes, mount_point: str) -> str | None:
    """The fstype of the last mount on ``mount_point`` in a mountinfo text.

    A line is ``ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] -
    FSTYPE SOURCE SUPER_OPTIONS``.  Mangled fields hold no space or newline,
    so lines split on newlines alone and fields on single spaces; the optional
    fields end at the first field that is exactly ``-``.
    """
    target = os.fsencode(mount_point)
    found = None
    for line in mountinfo.split(b"\n"):
        fields = line.split(b" ")
        if len(fields) < 8 or b"-" not in fields[6:]:
            continue
        dash = fields.index(b"-", 6)
        if dash + 1 >= len(fields) or _unmangle(fields[4]) != target:
            continue
        found = os.fsdecode(_unmangle(fields[dash + 1]))
    return found


def mount_fstype(mountpoint: str, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The fstype mounted at ``mountpoint`` (last mount wins), or None."""
    try:
        with open(mountinfo, "rb") as f:
            text = f.read()
    except OSError:
        return None
    return fstype_at(text, os.path.realpath(mountpoint))
