"""Where the perf backend's counters live: the provider protocol, and this process.

The backend opens, reads and closes its counters through a provider and
holds only int handles. :class:`DirectCounters` calls ``perf_event_open`` in
this process (the handles are the fds); the privsep daemon's
(:class:`ceilometer_cmt.privsep.entrypoints.PrivsepCounters`) holds the fds
for an unprivileged agent and answers one batched read per cycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ceilometer_cmt.backends.perf import counter_fds
from ceilometer_cmt.backends.perf.abi import EventSpec


class CounterProvider(Protocol):
    """Where counters are opened, read and closed; counters are int handles."""

    def open(self, specs: Sequence[EventSpec], pid: int, tid: int,
             domain_name: str) -> list[int]:
        """One enabled counter per spec on thread ``tid`` of qemu ``pid``, all or
        none; PerfProcessGone when the thread exited."""

    def read(self, handles: Sequence[int]) -> bytes:
        """One ``read`` per handle, as :func:`ceilometer_cmt.backends.perf.counter_fds.read_counts`
        gives them: 24 bytes per handle in order; OSError when any of them fails."""

    def close(self, handles: Sequence[int]) -> None:
        """Release the handles (idempotent, never raises OSError)."""

    def probe(self, specs: Sequence[EventSpec]) -> None:
        """Open, read and close each event once: raises when counting cannot work."""


class DirectCounters:
    """The counters in this process: handles are the perf fds themselves."""

    def open(self, specs: Sequence[EventSpec], pid: int, tid: int,
             domain_name: str) -> list[int]:
        return counter_fds.open_counters(specs, tid)

    def read(self, handles: Sequence[int]) -> bytes:
        return counter_fds.read_counts(handles)

    def close(self, handles: Sequence[int]) -> None:
        for fd in handles:
            counter_fds.close_fd(fd)

    def probe(self, specs: Sequence[EventSpec]) -> None:
        counter_fds.probe(specs)
