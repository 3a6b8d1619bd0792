"""The perf backend: cache occupancy and memory bandwidth per qemu thread via ``intel_cqm``.

Lifecycle, per instance (libvirt domain):

* **appears**: resolve its qemu process (pidfile + ``/proc/<pid>/cmdline``),
  then open one counter per thread (TID) per event (``inherit=1``, enabled).
  ``inherit`` only covers threads created *after* the open, so every existing
  TID gets its own counter; after the pass the thread list is read again and
  TIDs that appeared meanwhile are opened too, until the list is stable.
* **steady state**: one batched ``read`` of every counter of every instance,
  plus one look at the pid directory's watch
  (:mod:`~ceilometer_cmt.backends.perf.pid_dir_watch`). Threads started later
  are counted by inheritance, so no thread listing is needed.
* **goes** (not in the list any more, pidfile gone or replaced): its counters
  are closed. A new qemu process of the same instance gets new counters and a
  new counter key (``perf/<pid>/<generation>``), so the monitor carries an
  offset.
* **errors**: EACCES/EPERM raise :class:`PerfPermissionError` and
  ENOENT/EINVAL/ENODEV :class:`PerfUnsupported` (both BackendUnavailable);
  ESRCH on a thread skips it (on the main thread: instance gone); EMFILE
  leaves the instance in ``unmonitored`` with that reason (retried next cycle).

Counters come from a
:class:`~ceilometer_cmt.backends.perf.counter_providers.CounterProvider`, each
instance's are kept in a
:class:`~ceilometer_cmt.backends.perf.counted_instance.CountedInstance`, and
:mod:`~ceilometer_cmt.backends.perf.counts` turns the batch into readings.
What the kernel does with these counters: doc/perf-intel-cqm.md.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Collection, Mapping, Sequence

from ceilometer_cmt.backends.perf import pmu as perf_pmu
from ceilometer_cmt.backends.perf.abi import EventSpec
from ceilometer_cmt.backends.perf.counted_instance import CountedInstance, EventFds
from ceilometer_cmt.backends.perf.counter_providers import CounterProvider, DirectCounters
from ceilometer_cmt.backends.perf.counts import (
    MBM_LOCAL,
    MBM_TOTAL,
    OCCUPANCY,
    ROLES,
    ReadPlan,
    Role,
)
from ceilometer_cmt.backends.perf.pid_dir_watch import PidDirWatch
from ceilometer_cmt.backends.perf.pmu import CqmPmu, PmuEvent
from ceilometer_cmt.backends.perf.syscall import PerfError, PerfProcessGone, PerfTooManyFiles
from ceilometer_cmt.errors import BackendUnavailable, CmtError, InstanceGone, NotMonitored
from ceilometer_cmt.linux import procfs
from ceilometer_cmt.linux.sysfs_cache import read_host_cache
from ceilometer_cmt.readings import (
    LLC_OCCUPANCY,
    MBM_LOCAL_BYTES,
    MBM_TOTAL_BYTES,
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

#: role -> the resctrl event of the same value (the names the meter table uses)
RESCTRL_EVENTS: Mapping[str, str] = {
    OCCUPANCY: LLC_OCCUPANCY, MBM_TOTAL: MBM_TOTAL_BYTES, MBM_LOCAL: MBM_LOCAL_BYTES}


def perf_events(needed: Collection[str] | None) -> Mapping[str, str] | None:
    """The ``events`` argument that counts only what ``needed`` (resctrl event
    names, as :attr:`ceilometer_cmt.meters.Meter.events` gives them) asks
    for: one counter per thread per event, so fewer events, fewer fds and
    reads. None: every event. When the meters need none (host meters
    only), occupancy alone: the backend needs one event to open."""
    if needed is None:
        return None
    roles = {r: ev for r, ev in DEFAULT_EVENTS.items() if RESCTRL_EVENTS[r] in needed}
    return roles or {OCCUPANCY: DEFAULT_EVENTS[OCCUPANCY]}


#: how many times the thread list is re-read while opening one instance
MAX_OPEN_ROUNDS = 5


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
        self._tracked: dict[str, CountedInstance] = {}
        self._plan: ReadPlan | None = None
        self._watch = PidDirWatch(libvirt_pid_dir)
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

    def _reopen(self, ref: InstanceRef) -> CountedInstance:
        """Counters of a new, renamed, stopped or restarted instance."""
        self._drop(ref.uuid)
        t = self._open(ref)
        self._tracked[ref.uuid] = t
        self._plan = None
        return t

    def _open(self, ref: InstanceRef) -> CountedInstance:
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
        t = CountedInstance(ref.uuid, ref.domain_name, name, proc.pid, pidfile_fd, ino,
                     self._generation)
        t.roles.extend(EventFds(role) for role in self.events)
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

    def _open_tid(self, t: CountedInstance, tid: int) -> None:
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

    def _read(self, t: CountedInstance) -> dict[str, InstanceReading]:
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


__all__ = ["PerfBackend", "DEFAULT_EVENTS", "perf_events"]
