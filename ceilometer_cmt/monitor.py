"""From one backend read to the values of every meter, for any backend.

:class:`CacheMonitor` owns a backend, the per-instance MBM and telemetry
counters and the rate-limited "no data" log. Pollsters call :meth:`CacheMonitor.poll` once per
polling cycle and share the :class:`CycleResult`. The counters advance only
with the reads of the cycles that publish per-instance meters
(:meth:`CacheMonitor.count`): a source of host meters alone, polled at its
own interval, would otherwise cut the next rate's interval to the few
milliseconds since its read.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from ceilometer_cmt.counters import ByteCounter
from ceilometer_cmt.readings import (
    CORE_ENERGY,
    NANO,
    STALLS_LLC_MISS,
    UNHALTED_CORE_CYCLES,
    UOPS_RETIRED,
    Backend,
    BackendCycle,
    HostCache,
    InstanceReading,
    InstanceRef,
    TelemetryReading,
)

LOG = logging.getLogger(__name__)


@dataclass(slots=True)  # not frozen: made once per instance and cycle, cheaply
class InstanceMeters:
    occupancy: int | None = None
    occupancy_domains: dict[int, int] | None = None
    occupancy_percent: float | None = None
    mbm_total_bytes: int | None = None
    mbm_local_bytes: int | None = None
    mbm_total_rate: float | None = None
    mbm_local_rate: float | None = None
    # Intel AET telemetry, summed over packages (None: the host has no such
    # event, a package gave no value, or for the gauges: no interval yet)
    energy_core: float | None = None  # J since the agent first read the group
    power_core: float | None = None  # W between two reads
    cpu_ipc: float | None = None  # uops retired per unhalted core cycle
    llc_miss_stall_ratio: float | None = None  # LLC-miss stall cycles per cycle
    # L3 allocation (CAT): percent of the ways it may fill, the smallest over
    # the domains it holds cache in; per domain (None: no CAT on the host)
    allocation_percent: float | None = None
    allocation_domains: dict[int, float] | None = None


@dataclass
class CycleResult:
    backend: str
    timestamp: float
    host_cache: HostCache
    instances: dict[str, InstanceMeters] = field(default_factory=dict)
    unmonitored: dict[str, str] = field(default_factory=dict)
    monitors_used: int | None = None
    #: as in :class:`~ceilometer_cmt.readings.BackendCycle`
    mbm_counters: dict[int, int] | None = None
    mbm_counters_available: dict[int, int] | None = None
    removed_by_others: int | None = None
    mbm_config: dict[str, str] | None = None
    #: instances in the guard's cap groups (None: the backend cannot tell)
    capped: int | None = None
    #: the read, until :meth:`CacheMonitor.count` adds its counters
    uncounted: BackendCycle | None = field(default=None, repr=False, compare=False)


class RateLimitedLog:
    """Logs a (key, message) at most once per ``interval`` seconds and counts all."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self.counts: collections.Counter[str] = collections.Counter()

    #: beyond this many entries, forget what no longer matters (bounded memory
    #: under instance churn: reasons name pidfiles, uuids, paths)
    MAX_ENTRIES = 4096

    def __call__(self, key: str, reason: str, level: int = logging.INFO) -> None:
        self.counts[reason] += 1
        now = self.clock()
        last = self._last.get((key, reason))
        if last is None or now - last >= self.interval:
            self._last[(key, reason)] = now
            LOG.log(level, "%s: %s", key, reason)
        if len(self._last) > self.MAX_ENTRIES or len(self.counts) > self.MAX_ENTRIES:
            self._prune(now)

    def _prune(self, now: float) -> None:
        # An entry older than the interval would log again anyway: drop it.
        self._last = {k: t for k, t in self._last.items() if now - t < self.interval}
        if len(self.counts) > self.MAX_ENTRIES:
            self.counts = collections.Counter(dict(self.counts.most_common(
                self.MAX_ENTRIES // 2)))


def occupancy_meters(reading: InstanceReading, host: HostCache
                     ) -> tuple[int | None, dict[int, int] | None, float | None]:
    """Total bytes, per-domain bytes and percent of the busiest domain.

    Any domain without a value makes all three None: a partial sum would
    understate the instance's footprint.
    """
    occ = reading.occupancy
    if not occ or None in occ.values():
        return None, None, None
    domains: dict[int, int] = occ  # type: ignore[assignment]  # no None left
    sizes = host.sizes
    best = None
    for dom, value in domains.items():
        size = sizes.get(dom)
        if size:
            pct = 100.0 * value / size
            if best is None or pct > best:
                best = pct
    return sum(domains.values()), domains, best


class CacheMonitor:
    def __init__(self, backend: Backend, *, log_interval: float = 600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.backend = backend
        self.clock = clock
        self.host_cache = backend.host_cache()
        self.nodata = RateLimitedLog(log_interval, clock)
        #: uuid -> (mbm_total, mbm_local) counters
        self._counters: dict[str, tuple[ByteCounter, ByteCounter]] = {}
        #: uuid -> telemetry event -> counter (Intel AET hosts only)
        self._telemetry: dict[str, dict[str, ByteCounter]] = {}
        #: the time of the newest read counted: an older one never is
        self._counted_at = float("-inf")
        self.lock = threading.RLock()

    def poll(self, instances: Sequence[InstanceRef], *, counting: bool = True) -> CycleResult:
        """One backend read: occupancy and allocation of each instance, the
        host's figures, and unless ``counting`` is False (a cycle for host
        meters alone) the counters' bytes, energy and rates (:meth:`count`)."""
        with self.lock:
            cycle = self.backend.sync(instances)
            # The counters were read at the end of sync, after any placement
            # (a first cycle may wait seconds for the privsep daemon to start):
            # a rate is over the time between two reads, not two cycle starts.
            now = self.clock()
            result = CycleResult(self.backend.name, now, self.host_cache,
                                 unmonitored=dict(cycle.unmonitored),
                                 monitors_used=cycle.monitors_used,
                                 mbm_counters=cycle.mbm_counters,
                                 mbm_counters_available=cycle.mbm_counters_available,
                                 removed_by_others=cycle.removed_by_others,
                                 mbm_config=cycle.mbm_config, capped=cycle.capped)
            for uuid, reason in cycle.unmonitored.items():
                self.nodata(uuid, f"not monitored: {reason}")
            for uuid, reading in cycle.readings.items():
                result.instances[uuid] = self._occupancy(uuid, reading)
            for uuid, alloc in cycle.allocation.items():
                meters = result.instances.get(uuid)
                if meters is not None:
                    meters.allocation_percent = alloc.percent
                    meters.allocation_domains = alloc.domains
            result.uncounted = cycle
            if counting:
                self.count(result)
            return result

    def count(self, result: CycleResult) -> None:
        """Advance the MBM and AET counters with ``result``'s read and add
        bytes, energy and rates to its instances: once per result, and never
        for a read older than one already counted (it adds nothing then)."""
        with self.lock:
            cycle, result.uncounted = result.uncounted, None
            if cycle is None or result.timestamp < self._counted_at:
                return
            now = self._counted_at = result.timestamp
            for uuid, reading in cycle.readings.items():
                self._count_bytes(uuid, reading, now, result.instances[uuid])
            stale = self._counters.keys() - cycle.readings.keys() - cycle.unmonitored.keys()
            for uuid in stale:
                del self._counters[uuid]
            if cycle.telemetry or self._telemetry:
                self._telemetry_meters(cycle.telemetry, cycle.unmonitored.keys(),
                                       result, now)

    def _telemetry_meters(self, telemetry: dict[str, TelemetryReading],
                          keep: Iterable[str], result: CycleResult, now: float) -> None:
        """Energy, power, IPC and the LLC-miss stall share of each instance
        with telemetry: cumulative energy with offsets across resets; the
        others from the increase of each sum since the last read (none on the
        first read, after a gap or a reset, nor for an idle interval)."""
        states = self._telemetry
        for uuid, tele in telemetry.items():
            meters = result.instances.get(uuid)
            if meters is None:
                continue
            state = states.get(uuid)
            if state is None:
                state = states[uuid] = {}
            values = {}
            for event, raw in tele.items():
                counter = state.get(event)
                if counter is None:
                    # an RMID's counts outlive its group: a new one is a baseline
                    counter = state[event] = ByteCounter(count_new=False)
                value = values[event] = counter.update(raw, now)
                if value.cumulative is None and raw:
                    self.nodata(uuid, f"{event} gave no value (Unavailable/Error)")
            energy = values.get(CORE_ENERGY)
            if energy is not None:
                if energy.cumulative is not None:
                    meters.energy_core = energy.cumulative / NANO
                if energy.rate is not None:
                    meters.power_core = energy.rate / NANO
            cycles = values.get(UNHALTED_CORE_CYCLES)
            if cycles is not None and cycles.rate:  # no ratio over an idle interval
                uops = values.get(UOPS_RETIRED)
                if uops is not None and uops.rate is not None:
                    meters.cpu_ipc = uops.rate / cycles.rate
                stalls = values.get(STALLS_LLC_MISS)
                if stalls is not None and stalls.rate is not None:
                    meters.llc_miss_stall_ratio = stalls.rate / cycles.rate
        stale = states.keys() - telemetry.keys() - set(keep)
        for uuid in stale:
            del states[uuid]

    def _occupancy(self, uuid: str, reading: InstanceReading) -> InstanceMeters:
        total, domains, percent = occupancy_meters(reading, self.host_cache)
        if total is None and reading.occupancy:
            self.nodata(uuid, "llc_occupancy gave no value (Unavailable/Error)")
        return InstanceMeters(total, domains, percent)

    def _count_bytes(self, uuid: str, reading: InstanceReading, now: float,
                     meters: InstanceMeters) -> None:
        counters = self._counters.get(uuid)
        if counters is None:
            counters = self._counters[uuid] = (ByteCounter(), ByteCounter())
        mbm_t = counters[0].update(reading.mbm_total, now)
        mbm_l = counters[1].update(reading.mbm_local, now)
        if mbm_t.cumulative is None and reading.mbm_total:
            self.nodata(uuid, "mbm_total_bytes gave no value (Unavailable/Error/Unassigned)")
        if mbm_l.cumulative is None and reading.mbm_local:
            self.nodata(uuid, "mbm_local_bytes gave no value (Unavailable/Error/Unassigned)")
        meters.mbm_total_bytes, meters.mbm_local_bytes = mbm_t.cumulative, mbm_l.cumulative
        meters.mbm_total_rate, meters.mbm_local_rate = mbm_t.rate, mbm_l.rate

    def close(self) -> None:
        with self.lock:
            self.backend.close()
