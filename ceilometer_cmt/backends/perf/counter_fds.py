"""Perf counter fds: a :class:`Counter` owning one, and the same work on many.

A :class:`Counter` opens one counting event (``PERF_FLAG_FD_CLOEXEC``, so
processes the agent spawns never inherit it), enables, resets, reads and
closes it (idempotent; it is a context manager). A holder of many counters
(the perf backend in this process, or the privsep daemon's registry for it)
uses the bulk helpers on plain fds instead: :func:`open_counters` (all or
none), :func:`read_counts` (one batch per cycle), :func:`close_fd` and
:func:`probe`. A counter that never ran (``time_running == 0``) or was
multiplexed reads as ``None``, never 0 and never scaled (see
doc/perf-intel-cqm.md).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from types import TracebackType

from ceilometer_cmt.backends.perf.abi import (
    ATTR_DISABLED,
    PERF_EVENT_IOC_DISABLE,
    PERF_EVENT_IOC_ENABLE,
    PERF_EVENT_IOC_RESET,
    READ_FORMAT,
    READ_SIZE,
    EventSpec,
    make_attr,
)
from ceilometer_cmt.backends.perf.syscall import PerfError, error_for, ioctl, perf_event_open


@dataclass(frozen=True)
class Reading:
    """One ``read()``: the raw count and the two times (ns)."""

    value: int
    time_enabled: int
    time_running: int

    @property
    def usable(self) -> int | None:
        """The count, or None when never scheduled in or multiplexed."""
        if self.time_running == 0 or self.time_running < self.time_enabled:
            return None
        return self.value


class Counter:
    """One perf event fd: open, enable, read, close."""

    __slots__ = ("fd", "spec", "pid")

    def __init__(self, spec: EventSpec, pid: int, cpu: int = -1,
                 attr_size: int | None = None, enable: bool = True) -> None:
        self.spec = spec
        self.pid = pid
        self.fd = -1
        attr = make_attr(spec, attr_size)
        self.fd = perf_event_open(attr, pid, cpu)
        if enable and spec.flags & ATTR_DISABLED:
            try:
                self.enable()
            except BaseException:
                self.close()
                raise

    # ioctls
    def enable(self) -> None:
        ioctl(self._live(), PERF_EVENT_IOC_ENABLE)

    def disable(self) -> None:
        ioctl(self._live(), PERF_EVENT_IOC_DISABLE)

    def reset(self) -> None:
        ioctl(self._live(), PERF_EVENT_IOC_RESET)

    # reads
    def read_raw(self) -> Reading:
        try:
            raw = os.read(self._live(), READ_SIZE)
        except OSError as e:  # os.read retries EINTR itself (PEP 475)
            raise error_for(e.errno or errno.EIO, f"read(perf fd {self.fd})") from e
        if len(raw) != READ_SIZE:
            return Reading(0, 0, 0)
        value, enabled, running = READ_FORMAT.unpack(raw)
        return Reading(value, enabled, running)

    def read(self) -> int | None:
        return self.read_raw().usable

    # lifetime
    def _live(self) -> int:
        if self.fd < 0:
            raise PerfError("perf counter is closed", errno.EBADF)
        return self.fd

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            close_fd(fd)

    def __enter__(self) -> Counter:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:  # last resort; owners call close()
        try:
            self.close()
        except OSError:
            pass

    def __repr__(self) -> str:
        return (f"Counter(fd={self.fd}, pid={self.pid}, type={self.spec.type}, "
                f"config={self.spec.config:#x})")


# ---------------------------------------------------------------- fds in bulk

#: what an empty read (event in error state) becomes in a batch: never ran
NO_DATA = bytes(READ_SIZE)


def close_fd(fd: int) -> None:
    """``close(2)``; a failure is ignored: on EINTR/EIO Linux has released the fd anyway."""
    try:
        os.close(fd)
    except OSError:
        pass


def open_counters(specs: Sequence[EventSpec], tid: int) -> list[int]:
    """One enabled counter per spec on thread ``tid``, all or none: their fds,
    which the caller owns from now on (close them with :func:`close_fd`)."""
    opened: list[Counter] = []
    try:
        for spec in specs:
            opened.append(Counter(spec, tid))
    except BaseException:
        for c in opened:
            c.close()
        raise
    fds = [c.fd for c in opened]
    for c in opened:
        c.fd = -1  # handed over: the Counter objects must not close them
    return fds


def read_counts(fds: Sequence[int]) -> bytes:
    """One ``read`` per fd, :data:`READ_SIZE` bytes each, in order, as one blob;
    an empty read (event in error state) is :data:`NO_DATA`. ``OSError`` when a
    read fails."""
    chunks = list(map(os.read, fds, repeat(READ_SIZE, len(fds))))
    data = b"".join(chunks)
    if len(data) != READ_SIZE * len(fds):
        data = b"".join(c if len(c) == READ_SIZE else NO_DATA for c in chunks)
    return data


def probe(specs: Sequence[EventSpec]) -> None:
    """Open, enable, read and close each event on this process: raises the
    typed error of the first one the kernel refuses."""
    for spec in specs:
        with Counter(spec, os.getpid()) as c:
            c.read_raw()
