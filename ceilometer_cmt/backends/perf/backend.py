"""Per-instance cache occupancy and memory bandwidth through perf ``intel_cqm``.

Lifecycle, per instance (libvirt domain):

* **appears**: resolve its qemu process (pidfile + ``/proc/<pid>/cmdline``),
  then open one counter per thread (TID) per event: ``perf_event_open(attr
  {type=<intel_cqm type>, config=<event>, inherit=1, disabled=1},
  pid=<tid>, cpu=-1)`` + ``PERF_EVENT_IOC_ENABLE``. ``inherit`` only covers
  threads created *after* the open, so every existing TID gets its own
  counter; after the pass the thread list is read again and TIDs that
  appeared meanwhile are opened too, until the list is stable.
* **steady state**: one ``read`` per fd, all fds of all instances in one
  batch, plus one zero-timeout ``poll()`` per cycle on an inotify watch of
  the pidfile directory. Threads started later are counted by inheritance,
  so no thread listing is needed. The directory is listed again only when
  inotify reports a change (a domain stopped, started or restarted between
  two polls); the pidfile of each instance is held open, so its inode number
  cannot be reused and "same name, same inode" means "same qemu process".
* **goes** (not in the list any more, pidfile gone or replaced): its fds are
  closed. A new qemu process of the same instance gets new counters and new
  MBM counter keys (``perf/<pid>/<generation>``), so the monitor carries an
  offset.
* **errors**: EACCES/EPERM raise :class:`PerfPermissionError` (a
  BackendUnavailable naming ``perf_event_paranoid`` and CAP_PERFMON);
  ENOENT/EINVAL/ENODEV raise :class:`PerfUnsupported`; ESRCH on a thread
  skips it (on the main thread: instance gone); EMFILE leaves the instance in
  ``unmonitored`` with that reason (retried next cycle).

What the kernel's ``intel_cqm`` (4.1 - 4.13) does with these counters (one RMID
per opened thread, host-wide values, resets of MBM counts under one key):
doc/perf-intel-cqm.md.

Counters come from a :class:`CounterProvider`: :class:`DirectCounters`
(``perf_event_open`` in this process, the handles are the fds) by default, or
the privsep daemon's (:class:`ceilometer_cmt.privsep.entrypoints.PrivsepCounters`),
which holds the fds for an unprivileged agent and answers one batched read
per cycle.

Values: :mod:`ceilometer_cmt.backends.perf.counts` turns the batch into readings
(per event, the counts of an instance's threads summed; a counter that never
ran or was multiplexed adds nothing; an event where no counter qualifies is
``None``).
"""

from __future__ import annotations

import errno
import logging
import os
import select
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from inotify_simple import INotify
from inotify_simple import flags as iflags

from ceilometer_cmt.backends.perf import counter_fds as perf_events
from ceilometer_cmt.backends.perf import pmu as perf_pmu
from ceilometer_cmt.backends.perf.abi import EventSpec
from ceilometer_cmt.backends.perf.counts import (
    MBM_LOCAL,
    MBM_TOTAL,
    OCCUPANCY,
    ROLES,
    ReadPlan,
    Role,
)
from ceilometer_cmt.backends.perf.pmu import CqmPmu, PmuEvent
from ceilometer_cmt.backends.perf.syscall import (
    PerfError,
    PerfPermissionError,
    PerfProcessGone,
    PerfTooManyFiles,
    PerfUnsupported,
)
from ceilometer_cmt.errors import BackendUnavailable, CmtError, InstanceGone, NotMonitored
from ceilometer_cmt.linux import procfs
from ceilometer_cmt.linux.sysfs_cache import read_host_cache
from ceilometer_cmt.readings import (
    BackendCycle,
    Decision,
    HostCache,
    InstanceReading,
    InstanceRef,
)

LOG = logging.getLogger(__name__)

#: role -> event name of the PMU
DEFAULT_EVENTS: Mapping[str, str] = {
    OCCUPANCY: perf_pmu.OCCUPANCY_EVENT,
    MBM_TOTAL: perf_pmu.MBM_TOTAL_EVENT,
    MBM_LOCAL: perf_pmu.MBM_LOCAL_EVENT,
}

#: how many times the thread list is re-read while opening one instance
MAX_OPEN_ROUNDS = 5

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
        return perf_events.open_counters(specs, tid)

    def read(self, handles: Sequence[int]) -> bytes:
        return perf_events.read_counts(handles)

    def close(self, handles: Sequence[int]) -> None:
        for fd in handles:
            perf_events.close_fd(fd)

    def probe(self, specs: Sequence[EventSpec]) -> None:
        perf_events.probe(specs)


@dataclass
class _EventFds:
    """One event of one instance: its fds, one per counted thread."""

    name: str
    fds: list[int] = field(default_factory=list)


@dataclass
class _CountedInstance:
    uuid: str
    domain_name: str
    pidfile: str
    pid: int
    #: an open fd on the pidfile: while we hold it, its inode number cannot be
    #: given to a new file, so "same name, same inode" means "same qemu"
    pidfile_fd: int
    ino: int
    generation: int
    roles: list[_EventFds] = field(default_factory=list)
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
            perf_events.close_fd(fd)
        return len(handles)


class _PidDirWatch:
    """The pidfile inodes of ``pid_dir``, re-listed only when inotify says it changed.

    Steady state costs one ``poll()`` with a zero timeout per cycle on the
    inotify fd (inotify_simple's own ``read(timeout=0)`` would cost an ioctl and
    a read as well). Without inotify (watch limit, no such directory) the
    directory is listed every cycle instead.
    """

    MASK = (iflags.CLOSE_WRITE | iflags.MOVED_FROM | iflags.MOVED_TO | iflags.CREATE
            | iflags.DELETE | iflags.DELETE_SELF | iflags.MOVE_SELF)

    def __init__(self, path: str) -> None:
        self.path = path
        self.inotify: INotify | None = None
        self.poller: select.poll | None = None
        self.cache: dict[str, int] | None = None
        self.scans = 0

    def _arm(self) -> None:
        try:
            inotify = INotify(nonblocking=True)
        except OSError:
            return
        try:
            inotify.add_watch(self.path, self.MASK)
        except OSError:
            inotify.close()
            return
        self.inotify = inotify
        self.poller = select.poll()
        self.poller.register(inotify.fileno(), select.POLLIN)

    def _drain(self) -> None:
        """Empty the queue; drop the watch when the kernel removed it."""
        assert self.inotify is not None
        if any(ev.mask & iflags.IGNORED for ev in self.inotify.read(timeout=0)):
            self.close()

    def inodes(self) -> dict[str, int]:
        if self.inotify is None:
            self._arm()
        elif self.cache is not None and self.poller is not None and not self.poller.poll(0):
            return self.cache
        else:
            self._drain()
        self.scans += 1
        try:
            with os.scandir(self.path) as it:
                found = {e.name: e.inode() for e in it if e.name.endswith(".pid")}
        except OSError:
            found = {}
        self.cache = found if self.inotify is not None else None
        return found

    def close(self) -> None:
        inotify, self.inotify = self.inotify, None
        self.poller = None
        self.cache = None
        if inotify is not None:
            inotify.close()


class PerfBackend:
    """The :class:`~ceilometer_cmt.readings.Backend` on the perf ``intel_cqm`` PMU."""

    name = "perf"

    def __init__(
        self,
        sysfs_root: str = "/sys",
        proc_root: str = "/proc",
        libvirt_pid_dir: str = "/run/libvirt/qemu",
        *,
        pmu: CqmPmu | None = None,
        events: Mapping[str, str] | None = None,
        counters: CounterProvider | None = None,
    ) -> None:
        self.sysfs_root = sysfs_root
        self.proc_root = proc_root
        self.pid_dir = libvirt_pid_dir
        self.pmu = pmu if pmu is not None else perf_pmu.discover(sysfs_root)
        wanted = dict(DEFAULT_EVENTS if events is None else events)
        unknown = set(wanted) - set(ROLES)
        if unknown:
            raise ValueError(f"unknown event roles: {sorted(unknown)}")
        #: role -> event, only for events the PMU has
        self.events: dict[str, PmuEvent] = {
            role: self.pmu.events[ev] for role, ev in wanted.items() if ev in self.pmu.events}
        if not self.events:
            raise BackendUnavailable(
                f"perf PMU at {self.pmu.path or '?'} has none of the events "
                f"{', '.join(sorted(wanted.values()))}")
        self.specs: dict[str, EventSpec] = {
            role: ev.spec(self.pmu.type) for role, ev in self.events.items()}
        #: the roles every instance counts, in this order, with their byte factors
        self._roles = [Role(role, ev.byte_factor.numerator, ev.byte_factor.denominator)
                       for role, ev in self.events.items()]
        self.counters: CounterProvider = counters if counters is not None else DirectCounters()
        self._tracked: dict[str, _CountedInstance] = {}
        self._plan: ReadPlan | None = None
        self._watch = _PidDirWatch(libvirt_pid_dir)
        self._generation = 0
        #: (refs, pid dir inodes, monitors used) of the last cycle that left
        #: nothing to do; a cycle with the same refs and inodes only reads
        self._steady: tuple[tuple[InstanceRef, ...], dict[str, int] | None, int | None] = (
            (), None, None)
        #: counters of work done, for tests and benchmarks
        self.opens = 0
        self.closes = 0

    # ----------------------------------------------------------- Backend API
    def host_cache(self) -> HostCache:
        # intel_cqm publishes no RMID count in sysfs (it is CPUID.0xF.0:EBX).
        return read_host_cache(self.sysfs_root)

    def probe(self) -> None:
        """Open, enable, read and close every event on this process.

        Raises PerfPermissionError / PerfUnsupported (both BackendUnavailable)
        when the kernel refuses, which is what ``auto`` selection needs.
        """
        self.counters.probe(list(self.specs.values()))

    def auto_decision(self) -> Decision:
        """May ``auto`` take this backend? Only if every event opens (:meth:`probe`)."""
        try:
            self.probe()
        except CmtError as e:
            return Decision(self.name, False, f"intel_cqm PMU present but does not open: {e}")
        return Decision(self.name, True, "intel_cqm PMU opens")

    def sync(self, instances: Sequence[InstanceRef]) -> BackendCycle:
        cycle = BackendCycle()
        refs = tuple(instances)
        inodes = self._watch.inodes()  # once per cycle: without inotify it lists the dir
        if refs == self._steady[0] and inodes is self._steady[1]:
            # Same instances as last cycle, every one monitored, nothing moved
            # in the pid directory: only the reads.
            cycle.readings = self._read_all(cycle)
            cycle.monitors_used = self._steady[2]
            if cycle.unmonitored:
                self._steady = ((), None, None)
            return cycle
        wanted: dict[str, InstanceRef] = {}
        for ref in instances:
            wanted.setdefault(ref.uuid, ref)
        for uuid in [u for u in self._tracked if u not in wanted]:
            self._drop(uuid)
        tracked = self._tracked
        for uuid, ref in wanted.items():
            t = tracked.get(uuid)
            if (t is not None and t.domain_name == ref.domain_name
                    and inodes.get(t.pidfile) == t.ino):
                continue
            try:
                self._reopen(ref)
            except (InstanceGone, NotMonitored) as e:
                cycle.unmonitored[uuid] = str(e)
            except PerfError as e:
                if isinstance(e, BackendUnavailable):
                    raise
                self._failed(cycle, uuid, e)
            except OSError as e:
                self._failed(cycle, uuid, e)
        cycle.readings = self._read_all(cycle)
        cycle.monitors_used = sum(len(t.tids) for t in self._tracked.values())
        self._steady = ((refs, inodes, cycle.monitors_used) if not cycle.unmonitored
                        else ((), None, None))
        return cycle

    def close(self) -> None:
        self._steady = ((), None, None)
        for uuid in list(self._tracked):
            self._drop(uuid)
        self._watch.close()

    def __enter__(self) -> PerfBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------- introspection
    def tracked_fds(self, uuid: str) -> list[int]:
        t = self._tracked.get(uuid)
        return t.all_fds if t else []

    def tracked_tids(self, uuid: str) -> set[int]:
        t = self._tracked.get(uuid)
        return set(t.tids) if t else set()

    def counter_key(self, uuid: str) -> str | None:
        t = self._tracked.get(uuid)
        return t.key if t else None

    # ----------------------------------------------------------- internals
    def _drop(self, uuid: str) -> None:
        t = self._tracked.pop(uuid, None)
        if t is not None:
            self._plan = None
            self.closes += t.close(self.counters)

    def _failed(self, cycle: BackendCycle, uuid: str, e: Exception) -> None:
        self._drop(uuid)
        cycle.unmonitored[uuid] = f"perf error: {e}"
        LOG.warning("instance %s: %s", uuid, e)

    def _reopen(self, ref: InstanceRef) -> _CountedInstance:
        """Counters of a new, renamed, stopped or restarted instance."""
        self._drop(ref.uuid)
        t = self._open(ref)
        self._tracked[ref.uuid] = t
        self._plan = None
        return t

    def _open(self, ref: InstanceRef) -> _CountedInstance:
        procfs.check_domain_name(ref.domain_name)
        name = ref.domain_name + ".pid"
        pidfile = os.path.join(self.pid_dir, name)
        try:
            # held while the instance is tracked: a pidfile replaced after this
            # is a new inode, seen next cycle
            pidfile_fd = procfs.open_pidfile(pidfile, os.O_NOFOLLOW)
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE):
                raise NotMonitored(f"out of file descriptors: {e.strerror}") from e
            raise InstanceGone(f"cannot open pidfile {pidfile}: {e.strerror}") from e
        try:
            ino = os.fstat(pidfile_fd).st_ino
            # the pid of the very file held open, not of a second open of the path
            proc = procfs.qemu_process(self.proc_root, procfs.read_pid(pidfile_fd, pidfile),
                                       ref.domain_name, pidfile)
        except BaseException:
            os.close(pidfile_fd)
            raise
        self._generation += 1
        t = _CountedInstance(ref.uuid, ref.domain_name, name, proc.pid, pidfile_fd, ino,
                     self._generation)
        t.roles.extend(_EventFds(role) for role in self.events)
        tried: set[int] = set()
        pending = list(proc.tids)
        try:
            for _ in range(MAX_OPEN_ROUNDS):
                for tid in pending:
                    tried.add(tid)
                    self._open_tid(t, tid)
                try:
                    now = procfs.list_tids(self.proc_root, proc.pid)
                except InstanceGone:
                    now = ()
                pending = [tid for tid in now if tid not in tried]
                if not pending:
                    break
            else:
                LOG.warning("instance %s: qemu %d kept starting threads while counters "
                            "were opened; threads started by uncounted threads may be "
                            "missed", ref.uuid, proc.pid)
            if proc.pid not in t.tids:
                raise InstanceGone(f"qemu process {proc.pid} of {ref.domain_name!r} exited")
            t.freeze()
        except PerfTooManyFiles as e:
            self.closes += t.close(self.counters)
            raise NotMonitored(
                f"out of file descriptors opening {len(self.events)} perf counter(s) "
                f"per thread for qemu {proc.pid}: {e}") from e
        except BaseException:
            self.closes += t.close(self.counters)
            raise
        return t

    def _open_tid(self, t: _CountedInstance, tid: int) -> None:
        try:
            handles = self.counters.open([self.specs[r.name] for r in t.roles], t.pid, tid,
                                         t.domain_name)
        except PerfProcessGone:
            return  # thread exited between listing and open
        self.opens += len(handles)
        if len(handles) != len(t.roles):  # a provider breaking its contract
            self.counters.close(handles)
            self.closes += len(handles)
            raise PerfError(f"{len(handles)} counters opened for {len(t.roles)} events "
                            f"on thread {tid} of qemu {t.pid}", errno.EIO)
        for role, h in zip(t.roles, handles, strict=True):
            role.fds.append(h)
        t.tids.add(tid)

    def _read_all(self, cycle: BackendCycle) -> dict[str, InstanceReading]:
        """One ``read`` per fd of every instance, in one batch (see
        :mod:`ceilometer_cmt.backends.perf.counts` for how counts become readings)."""
        plan = self._plan
        if plan is None:
            plan = self._plan = ReadPlan.build(self._tracked.values(), self._roles)
        try:
            data = self.counters.read(plan.fds)
        except OSError:
            data = None
        if data is not None and len(data) == plan.nbytes:
            out = plan.readings(data)
            return out if out is not None else plan.careful(data)
        out = {}
        for t in list(self._tracked.values()):  # a read failed: find whose
            try:
                out.update(self._read(t))
            except (PerfError, OSError) as e:
                self._failed(cycle, t.uuid, e)
        return out

    def _read(self, t: _CountedInstance) -> dict[str, InstanceReading]:
        """The instance on its own (slow path)."""
        plan = ReadPlan.build([t], self._roles)
        try:
            data = self.counters.read(plan.fds)
        except OSError as e:
            raise PerfError(f"read of qemu {t.pid} counters: {e.strerror}",
                            e.errno or errno.EIO) from e
        if len(data) != plan.nbytes:
            raise PerfError(f"read of qemu {t.pid} counters: {len(data)} bytes for "
                            f"{len(plan.fds)} counters", errno.EIO)
        return plan.careful(data)


__all__ = ["PerfBackend", "PerfPermissionError", "PerfUnsupported", "DEFAULT_EVENTS",
           "CounterProvider", "DirectCounters"]
