"""From one backend read to the values of every meter, for any backend.

:class:`CacheMonitor` owns a backend, the per-instance MBM counters and the
rate-limited "no data" log. Pollsters call :meth:`CacheMonitor.poll` once per
polling cycle and share the :class:`CycleResult`.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ceilometer_cmt.counters import ByteCounter
from ceilometer_cmt.readings import Backend, HostCache, InstanceReading, InstanceRef

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


@dataclass
class CycleResult:
    backend: str
    timestamp: float
    host: HostCache
    instances: dict[str, InstanceMeters] = field(default_factory=dict)
    unmonitored: dict[str, str] = field(default_factory=dict)
    monitors_used: int | None = None


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
        self.host = backend.host_cache()
        self.nodata = RateLimitedLog(log_interval, clock)
        #: uuid -> (mbm_total, mbm_local) counters
        self._counters: dict[str, tuple[ByteCounter, ByteCounter]] = {}
        self.lock = threading.RLock()

    def poll(self, instances: Sequence[InstanceRef]) -> CycleResult:
        with self.lock:
            now = self.clock()
            cycle = self.backend.sync(instances)
            result = CycleResult(self.backend.name, now, self.host,
                                 unmonitored=dict(cycle.unmonitored),
                                 monitors_used=cycle.monitors_used)
            for uuid, reason in cycle.unmonitored.items():
                self.nodata(uuid, f"not monitored: {reason}")
            for uuid, reading in cycle.readings.items():
                result.instances[uuid] = self._meters(uuid, reading, now)
            stale = self._counters.keys() - cycle.readings.keys() - cycle.unmonitored.keys()
            for uuid in stale:
                del self._counters[uuid]
            return result

    def _meters(self, uuid: str, reading: InstanceReading, now: float) -> InstanceMeters:
        total, domains, percent = occupancy_meters(reading, self.host)
        if total is None and reading.occupancy:
            self.nodata(uuid, "llc_occupancy gave no value (Unavailable/Error)")
        counters = self._counters.get(uuid)
        if counters is None:
            counters = self._counters[uuid] = (ByteCounter(), ByteCounter())
        mbm_t = counters[0].update(reading.mbm_total, now)
        mbm_l = counters[1].update(reading.mbm_local, now)
        if mbm_t.cumulative is None and reading.mbm_total:
            self.nodata(uuid, "mbm_total_bytes gave no value (Unavailable/Error/Unassigned)")
        if mbm_l.cumulative is None and reading.mbm_local:
            self.nodata(uuid, "mbm_local_bytes gave no value (Unavailable/Error/Unassigned)")
        return InstanceMeters(total, domains, percent, mbm_t.cumulative, mbm_l.cumulative,
                              mbm_t.rate, mbm_l.rate)

    def close(self) -> None:
        with self.lock:
            self.backend.close()
