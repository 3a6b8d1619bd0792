"""Per-instance cache occupancy and memory bandwidth through perf ``intel_cqm``.

Lifecycle, per instance (libvirt domain):

* **appears**: resolve its qemu process (pidfile + ``/proc/<pid>/cmdline``),
  then open one counter per thread (TID) per event: ``perf_event_open(attr
  {type=<intel_cqm type>, config=<event>, inherit=1, disabled=1},
  pid=<tid>, cpu=-1)`` + ``PERF_EVENT_IOC_ENABLE``. ``inherit`` only covers
  threads created *after* the open, so every existing TID gets its own
  counter; after the pass the thread list is read again and TIDs that
  appeared meanwhile are opened too, until the list is stable.
* **steady state**: one ``stat`` of the pidfile per instance (to notice a
  stop/start that gave the domain a new qemu process between two polls) and
  one ``read`` per fd. Threads started later are counted by inheritance, so
  no thread listing is needed.
* **goes** (not in the list any more, pidfile gone or replaced): its fds are
  closed. A new qemu process of the same instance gets new counters and new
  MBM counter keys (a "generation"), so the monitor carries an offset.

What the kernel (``arch/x86/events/intel/cqm.c``, 4.1 - 4.13) does with this:

* Events on the same task share one RMID; an inherited event shares its
  parent's RMID. Each TID we open is a distinct target, so **each opened TID
  costs one RMID** (``monitors_used`` counts them). When RMIDs run out the
  kernel rotates them between event groups, and values of a group without an
  RMID are stale: that is the main reason the interface was removed.
* A task event (``cpu=-1``) reports, on ``read``, the value of its RMID
  summed over every package: the occupancy is host-wide
  (:data:`~ceilometer_cmt.readings.HOST_WIDE`), never per socket.
* ``llc_occupancy`` is a snapshot gauge (``.snapshot`` = 1): bytes = raw x
  ``.scale``. ``total_bytes``/``local_bytes`` count bytes since the RMID was
  given to the group (the kernel zeroes them then); ``.scale`` 1e-6 with
  ``.unit`` MB only converts to MB for ``perf stat``.
* The PMU refuses ``exclude_*`` bits and sampling (EINVAL), so counting
  needs ``perf_event_paranoid`` <= 1 or CAP_SYS_ADMIN/CAP_PERFMON, plus
  ptrace access to the qemu process.

Values: per event, the reads of all the instance's fds are summed; an fd
that gave no data (thread never ran since the open) adds nothing, and an
event where no fd gave data is ``None``.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ceilometer_cmt import perf_pmu, procfs
from ceilometer_cmt.errors import BackendUnavailable, InstanceGone, NotMonitored
from ceilometer_cmt.perf_events import (
    Counter,
    EventSpec,
    PerfError,
    PerfPermissionError,
    PerfProcessGone,
    PerfTooManyFiles,
    PerfUnsupported,
)
from ceilometer_cmt.perf_pmu import CqmPmu, PmuEvent
from ceilometer_cmt.readings import (
    HOST_WIDE,
    BackendCycle,
    HostCache,
    InstanceReading,
    InstanceRef,
)
from ceilometer_cmt.sysfs_cache import read_host_cache

LOG = logging.getLogger(__name__)

OCCUPANCY = "occupancy"
MBM_TOTAL = "mbm_total"
MBM_LOCAL = "mbm_local"
ROLES = (OCCUPANCY, MBM_TOTAL, MBM_LOCAL)

#: role -> event name of the PMU
DEFAULT_EVENTS: Mapping[str, str] = {
    OCCUPANCY: perf_pmu.OCCUPANCY_EVENT,
    MBM_TOTAL: perf_pmu.MBM_TOTAL_EVENT,
    MBM_LOCAL: perf_pmu.MBM_LOCAL_EVENT,
}

#: how many times the thread list is re-read while opening one instance
MAX_OPEN_ROUNDS = 5

_UNPACK = struct.Struct("=QQQ").unpack


@dataclass
class _Role:
    """One event of one instance: the fds to sum and how to turn them into bytes."""

    event: PmuEvent
    fds: list[int] = field(default_factory=list)
    num: int = 1
    den: int = 1


@dataclass
class _Tracked:
    uuid: str
    domain_name: str
    pid: int
    pidfile_sig: tuple[int, int]
    generation: int
    counters: list[Counter] = field(default_factory=list)
    roles: dict[str, _Role] = field(default_factory=dict)
    tids: set[int] = field(default_factory=set)

    @property
    def key(self) -> str:
        return f"perf/{self.pid}/{self.generation}"

    def close(self) -> None:
        counters, self.counters = self.counters, []
        for c in counters:
            c.close()
        for role in self.roles.values():
            role.fds.clear()


def _sum_fds(fds: list[int]) -> int | None:
    """Sum of usable counts (never run / multiplexed fds add nothing)."""
    total = 0
    seen = False
    read = os.read
    for fd in fds:
        raw = read(fd, 24)
        if len(raw) == 24:
            value, enabled, running = _UNPACK(raw)
            if running and running >= enabled:
                total += value
                seen = True
    return total if seen else None


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
        self._tracked: dict[str, _Tracked] = {}
        self._generation = 0
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
        for spec in self.specs.values():
            with Counter(spec, os.getpid()) as c:
                c.read_raw()

    def sync(self, instances: Sequence[InstanceRef]) -> BackendCycle:
        cycle = BackendCycle()
        wanted: dict[str, InstanceRef] = {}
        for ref in instances:
            wanted.setdefault(ref.uuid, ref)
        for uuid in [u for u in self._tracked if u not in wanted]:
            self._drop(uuid)
        for uuid, ref in wanted.items():
            try:
                tracked = self._current(ref)
                cycle.readings[uuid] = self._read(tracked)
            except (InstanceGone, NotMonitored) as e:
                cycle.unmonitored[uuid] = str(e)
            except PerfError as e:
                if isinstance(e, BackendUnavailable):
                    raise
                self._drop(uuid)
                cycle.unmonitored[uuid] = f"perf error: {e}"
                LOG.warning("instance %s: %s", uuid, e)
            except OSError as e:
                self._drop(uuid)
                cycle.unmonitored[uuid] = f"perf error: {e}"
                LOG.warning("instance %s: %s", uuid, e)
        cycle.monitors_used = sum(len(t.tids) for t in self._tracked.values())
        return cycle

    def close(self) -> None:
        for uuid in list(self._tracked):
            self._drop(uuid)

    def __enter__(self) -> PerfBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------- introspection
    def tracked_fds(self, uuid: str) -> list[int]:
        t = self._tracked.get(uuid)
        return [c.fd for c in t.counters] if t else []

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
            self.closes += len(t.counters)
            t.close()

    def _pidfile(self, domain_name: str) -> str:
        return os.path.join(self.pid_dir, domain_name + ".pid")

    def _current(self, ref: InstanceRef) -> _Tracked:
        """The live counters of ``ref``, (re)opened when needed."""
        t = self._tracked.get(ref.uuid)
        if t is not None:
            if t.domain_name == ref.domain_name:
                try:
                    st = os.stat(self._pidfile(ref.domain_name))
                    if (st.st_ino, st.st_mtime_ns) == t.pidfile_sig:
                        return t
                except OSError:
                    pass
            self._drop(ref.uuid)  # renamed, stopped or restarted
        t = self._open(ref)
        self._tracked[ref.uuid] = t
        return t

    def _open(self, ref: InstanceRef) -> _Tracked:
        procfs.check_domain_name(ref.domain_name)
        pidfile = self._pidfile(ref.domain_name)
        try:
            # stat before resolving: a pidfile replaced after this is seen next cycle
            st = os.stat(pidfile)
        except FileNotFoundError as e:
            raise InstanceGone(f"no pidfile {pidfile} (instance not running)") from e
        proc = procfs.find_qemu_process(self.pid_dir, self.proc_root, ref.domain_name)
        self._generation += 1
        t = _Tracked(ref.uuid, ref.domain_name, proc.pid, (st.st_ino, st.st_mtime_ns),
                     self._generation)
        for role, ev in self.events.items():
            f = ev.byte_factor
            t.roles[role] = _Role(ev, num=f.numerator, den=f.denominator)
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
        except PerfTooManyFiles as e:
            self.closes += len(t.counters)
            t.close()
            raise NotMonitored(
                f"out of file descriptors opening {len(self.events)} perf counter(s) "
                f"per thread for qemu {proc.pid}: {e}") from e
        except BaseException:
            self.closes += len(t.counters)
            t.close()
            raise
        return t

    def _open_tid(self, t: _Tracked, tid: int) -> None:
        opened: list[tuple[str, Counter]] = []
        try:
            for role, spec in self.specs.items():
                opened.append((role, Counter(spec, tid)))
        except PerfProcessGone:
            for _, c in opened:
                c.close()
            return  # thread exited between listing and open
        except BaseException:
            for _, c in opened:
                c.close()
            raise
        self.opens += len(opened)
        for role, c in opened:
            t.counters.append(c)
            t.roles[role].fds.append(c.fd)
        t.tids.add(tid)

    def _read(self, t: _Tracked) -> InstanceReading:
        reading = InstanceReading()
        for role, r in t.roles.items():
            try:
                raw = _sum_fds(r.fds)
            except OSError as e:
                raise PerfError(f"read of qemu {t.pid} counters: {e.strerror}",
                                e.errno or errno.EIO) from e
            value = None if raw is None else (raw if r.num == r.den == 1
                                               else raw * r.num // r.den)
            if role == OCCUPANCY:
                reading.occupancy[HOST_WIDE] = value
            elif role == MBM_TOTAL:
                reading.mbm_total[t.key] = value
            else:
                reading.mbm_local[t.key] = value
        return reading


__all__ = ["PerfBackend", "PerfPermissionError", "PerfUnsupported", "DEFAULT_EVENTS"]
