"""One instance the perf backend counts: its qemu, its threads, its counter handles.

A :class:`CountedInstance` is the bookkeeping of one libvirt domain while it
is counted: the pidfile held open (so "same name, same inode" means "same
qemu process"), the qemu pid and the generation that make its counter key
(``perf/<pid>/<generation>``), the counted thread ids, and per event
(:class:`EventFds`) one counter handle per thread, in the order a batched
read returns them. Closing it releases every handle and the pidfile.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ceilometer_cmt.backends.perf import counter_fds
from ceilometer_cmt.backends.perf.counter_providers import CounterProvider


@dataclass
class EventFds:
    """One event of one instance: its fds, one per counted thread."""

    name: str
    fds: list[int] = field(default_factory=list)


@dataclass
class CountedInstance:
    """One counted domain: its qemu, pidfile, threads and counters per event."""

    uuid: str
    domain_name: str
    pidfile: str
    pid: int
    #: an open fd on the pidfile: while we hold it, its inode number cannot be
    #: given to a new file, so "same name, same inode" means "same qemu"
    pidfile_fd: int
    ino: int
    generation: int
    roles: list[EventFds] = field(default_factory=list)
    tids: set[int] = field(default_factory=set)
    key: str = ""  # set by freeze() once every counter is open

    @property
    def threads(self) -> int:
        return len(self.tids)

    @property
    def all_fds(self) -> list[int]:
        """Every counter handle, role after role (the order a batch reads them)."""
        return [fd for r in self.roles for fd in r.fds]

    def freeze(self) -> None:
        self.key = f"perf/{self.pid}/{self.generation}"

    def close(self, provider: CounterProvider) -> int:
        """Closes every counter and the pidfile; returns how many counters."""
        handles = self.all_fds
        if handles:
            provider.close(handles)
        for role in self.roles:
            role.fds.clear()
        fd, self.pidfile_fd = self.pidfile_fd, -1
        if fd >= 0:
            counter_fds.close_fd(fd)
        return len(handles)
