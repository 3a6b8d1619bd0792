"""Knowing, cheaply and for sure, that a qemu process is still the one we saw.

On the host's real ``/proc`` each resolved process is held by a pidfd
(``pidfd_open``, Linux >= 5.3): a pidfd names one process, never a later one
with the same pid, and becomes readable when it exits. One ``poll()`` with
timeout 0 over all pidfds tells every exit of a cycle in a single syscall.

Elsewhere (fixture trees, old kernels, fd limit reached) the identity is the
process start time, field 22 of ``/proc/<pid>/stat``, read each cycle.
"""

from __future__ import annotations

import os
import select

from ceilometer_cmt.linux.procfs import stat_start_time


def start_time(proc_root: str, pid: int) -> int | None:
    """Start time of ``pid`` (clock ticks since boot), None when it is gone."""
    return stat_start_time(os.path.join(proc_root, str(pid), "stat"))


class PidfdWatch:
    """pidfds of watched processes, polled together."""

    def __init__(self, proc_root: str) -> None:
        self.proc_root = proc_root
        self.enabled = (hasattr(os, "pidfd_open")
                        and os.path.realpath(proc_root) == "/proc")
        self._poller = select.poll()
        self._fds: set[int] = set()

    def watch(self, pid: int) -> int | None:
        """A pidfd for ``pid`` if it is the same process before and after
        opening; None when pidfds are not available here (caller falls back)."""
        if not self.enabled:
            return None
        before = start_time(self.proc_root, pid)
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return None  # ESRCH: gone (the caller notices); EMFILE: fall back
        if before is None or start_time(self.proc_root, pid) != before:
            os.close(fd)
            return None
        self._poller.register(fd, select.POLLIN)
        self._fds.add(fd)
        return fd

    def unwatch(self, fd: int | None) -> None:
        if fd is not None and fd in self._fds:
            self._fds.discard(fd)
            self._poller.unregister(fd)
            os.close(fd)

    def exited(self) -> set[int]:
        """pidfds whose process has exited (one syscall for all)."""
        if not self._fds:
            return set()
        return {fd for fd, _ev in self._poller.poll(0)}

    def close(self) -> None:
        for fd in list(self._fds):
            self.unwatch(fd)
