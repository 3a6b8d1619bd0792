"""The perf counters of the privsep daemon, on behalf of an unprivileged agent.

oslo.privsep cannot hand file descriptors back to its client, so the
``intel_cqm`` counters live in the daemon; the agent holds integer handles.
:class:`CounterRegistry` is that daemon-side state, plain Python (the
entrypoints in :mod:`ceilometer_cmt.privsep.entrypoints` only wrap it), and checks
every request itself, trusting only its own configuration:

* **events**: ``(type, config, config1, config2)`` must be one of the events
  the daemon discovers itself under *its* ``sysfs_root`` (the ``intel_cqm``
  PMU); the attr bits (``disabled``, ``inherit``, the read format) are the
  daemon's, never the client's. A client cannot count an arbitrary PMU event.
* **threads**: by the daemon's :class:`~ceilometer_cmt.privsep.rules.QemuRule`:
  ``pid`` must be the one in the root-owned pidfile of the domain the client
  names, run as a qemu user, run a configured emulator and name the guest on
  its command line; ``tid`` must be one of its threads. The qemu is held by a
  pidfd and the thread's start time is read before the open and again after
  it, so a pid or thread id reused meanwhile is refused, not counted.
* **cap**: at most ``max_counters`` counters are open at once
  (:class:`~ceilometer_cmt.backends.perf.syscall.PerfTooManyFiles` beyond, which the
  backend turns into an unmonitored instance).
* **lifetime**: the client closes handles it drops; whatever it leaves is
  closed when the daemon exits with its client. Reads and closes hold one
  lock, so a handle closed during a read never reads a reused fd number.

Reads are batched: :meth:`CounterRegistry.read` answers for every handle in
one call (one privsep round trip per polling cycle) with what
:func:`~ceilometer_cmt.backends.perf.counter_fds.read_counts` gives, 24 bytes per handle in
the order asked (an empty read, event in error state, as 24 zero bytes: no
data). An unknown
handle or a failing ``read`` fails the whole batch (``OSError``), so the
backend falls back to reading instance by instance, as with its own fds.
"""

from __future__ import annotations

import errno
import os
import resource
import secrets
import threading
from collections.abc import Iterable, Sequence

from ceilometer_cmt.backends.perf import counter_fds
from ceilometer_cmt.backends.perf import pmu as perf_pmu
from ceilometer_cmt.backends.perf.abi import EventSpec
from ceilometer_cmt.backends.perf.syscall import PerfProcessGone, PerfTooManyFiles
from ceilometer_cmt.errors import InstanceGone
from ceilometer_cmt.linux import procfs
from ceilometer_cmt.privsep.rules import Qemu, QemuRule, check_tids, refuse

#: default cap on the counters one daemon holds (3 events x ~1300 threads)
MAX_COUNTERS = 4096

Wire = tuple[int, int, int, int]  # (type, config, config1, config2)


def to_wire(spec: EventSpec) -> Wire:
    """What the client sends for an event: its PMU type and config words only."""
    defaults = EventSpec(spec.type, spec.config)
    if (spec.flags, spec.read_format) != (defaults.flags, defaults.read_format):
        raise ValueError("the privsep daemon sets the attr bits itself; "
                         f"cannot count {spec} through it")
    return (spec.type, spec.config, spec.config1, spec.config2)


def _start_time(proc_root: str, pid: int, tid: int) -> int | None:
    """Start time of thread ``tid`` of ``pid``; None when no such thread."""
    return procfs.stat_start_time(os.path.join(proc_root, str(pid), "task", str(tid), "stat"))


class CounterRegistry:
    """Counters held for a client, by handle; thread-safe (privsep's pool)."""

    def __init__(self, sysfs_root: str, rule: QemuRule, *,
                 max_counters: int = MAX_COUNTERS, raise_nofile: bool = False) -> None:
        self.sysfs_root = sysfs_root
        self.rule = rule
        self.proc_root = rule.proc_root
        self.max_counters = max_counters
        self._lock = threading.Lock()
        self._fds: dict[int, int] = {}
        # handles start at a random base: one daemon's handles mean nothing to another
        self._next = secrets.randbits(40) << 12
        self._allowed: frozenset[Wire] | None = None
        if raise_nofile:  # the daemon: room for the cap
            _raise_nofile(max_counters + 64)

    # ------------------------------------------------------------ validation
    def allowed(self) -> frozenset[Wire]:
        """The events of this host's ``intel_cqm`` PMU, as the daemon sees them."""
        if self._allowed is None:
            pmu = perf_pmu.discover(self.sysfs_root)
            self._allowed = frozenset(to_wire(pmu.spec(name)) for name in pmu.events)
        return self._allowed

    def _specs(self, events: Iterable[Sequence[int]]) -> list[EventSpec]:
        allowed = self.allowed()
        specs = []
        for ev in events:
            wire = tuple(int(x) for x in ev)
            if len(wire) != 4 or wire not in allowed:
                raise refuse("perf-event", f"perf event {list(ev)!r} is not an event of the "
                                           f"intel_cqm PMU under {self.sysfs_root}")
            specs.append(EventSpec(*wire))
        if not specs:
            raise ValueError("no event to open")
        return specs

    # ------------------------------------------------------------ operations
    def open(self, events: Iterable[Sequence[int]], pid: int, tid: int,
             domain_name: str) -> list[int]:
        """One counter per event on thread ``tid`` of the qemu ``pid``; their handles."""
        pid, tid = check_tids([pid, tid])
        specs = self._specs(events)
        try:
            qemu = self.rule.qemu_of(domain_name, pid)
        except InstanceGone as e:
            raise PerfProcessGone(str(e), errno.ESRCH) from None
        try:
            return self._open(specs, qemu.pid, tid, qemu)
        finally:
            qemu.close()

    def _open(self, specs: list[EventSpec], pid: int, tid: int, qemu: Qemu) -> list[int]:
        started = _start_time(self.proc_root, pid, tid)
        try:
            gone = self.rule.check_threads(qemu, [tid])
        except InstanceGone as e:
            raise PerfProcessGone(str(e), errno.ESRCH) from None
        if started is None or gone:
            raise PerfProcessGone(f"thread {tid} of process {pid} is gone", errno.ESRCH)
        with self._lock:
            if len(self._fds) + len(specs) > self.max_counters:
                raise PerfTooManyFiles(
                    f"the privsep daemon holds {len(self._fds)} perf counters, its cap "
                    f"is {self.max_counters}", errno.EMFILE)
            fds = counter_fds.open_counters(specs, tid)
            # the thread that was opened is the one that was checked: the qemu
            # still runs (its pidfd) and the thread has the same start time
            if not qemu.alive() or _start_time(self.proc_root, pid, tid) != started:
                for fd in fds:
                    counter_fds.close_fd(fd)
                raise PerfProcessGone(f"thread {tid} of process {pid} exited", errno.ESRCH)
            handles = []
            for fd in fds:
                self._next += 1
                self._fds[self._next] = fd
                handles.append(self._next)
            return handles

    def read(self, handles: Sequence[int]) -> bytes:
        """24 bytes per handle, in order, for one batch of handles."""
        with self._lock:  # a close meanwhile would free an fd number being read
            fds = self._fds
            try:
                mine = [fds[h] for h in handles]
            except KeyError as e:
                raise OSError(errno.EBADF, f"no perf counter with handle {e.args[0]}") from None
            return counter_fds.read_counts(mine)

    def close(self, handles: Iterable[int]) -> None:
        with self._lock:
            for h in handles:
                fd = self._fds.pop(int(h), None)
                if fd is not None:
                    counter_fds.close_fd(fd)

    def close_all(self) -> None:
        with self._lock:
            fds, self._fds = list(self._fds.values()), {}
        for fd in fds:
            counter_fds.close_fd(fd)

    def probe(self, events: Iterable[Sequence[int]]) -> None:
        """Open, read and close every event on the daemon itself: can it count?"""
        counter_fds.probe(self._specs(events))

    def __len__(self) -> int:
        return len(self._fds)


def _raise_nofile(want: int) -> None:
    """Room for the cap: raise the soft fd limit towards the hard one."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = want if hard == resource.RLIM_INFINITY else min(want, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError):
        pass
