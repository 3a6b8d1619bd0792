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


@dataclass(frozen=True)
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

    def __call__(self, key: str, reason: str, level: int = logging.INFO) -> None:
        self.counts[reason] += 1
        now = self.clock()
        last = self._last.get((key, reason))
        if last is None or now - last >= self.interval:
            self._last[(key, reason)] = now
            LOG.log(level, "%s: %s", key, reason)


def occupancy_meters(reading: InstanceReading, host: HostCache
                     ) -> tuple[int | None, dict[int, int] | None, float | None]:
    """Total bytes, per-domain bytes and percent of the busiest domain.

    Any domain without a value makes all three None: a partial sum would
    understate the instance's footprint.
    """
    occ = reading.occupancy
    if not occ or any(v is None for v in occ.values()):
        return None, None, None
    domains = {k: v for k, v in occ.items() if v is not None}
    total = sum(domains.values())
    percents = []
    for dom, value in domains.items():
        size = host.domain_size(dom)
        if size:
            percents.append(100.0 * value / size)
    return total, domains, (max(percents) if percents else None)


class CacheMonitor:
    def __init__(self, backend: Backend, *, log_interval: float = 600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.backend = backend
        self.clock = clock
        self.host = backend.host_cache()
        self.nodata = RateLimitedLog(log_interval, clock)
        self._counters: dict[tuple[str, str], ByteCounter] = {}
        self.lock = threading.RLock()
        self.last: CycleResult | None = None

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
            live = set(cycle.readings) | set(cycle.unmonitored)
            for key in [k for k in self._counters if k[0] not in live]:
                del self._counters[key]
            self.last = result
            return result

    def _counter(self, uuid: str, event: str) -> ByteCounter:
        key = (uuid, event)
        if key not in self._counters:
            self._counters[key] = ByteCounter()
        return self._counters[key]

    def _meters(self, uuid: str, reading: InstanceReading, now: float) -> InstanceMeters:
        total, domains, percent = occupancy_meters(reading, self.host)
        if total is None and reading.occupancy:
            self.nodata(uuid, "llc_occupancy gave no value (Unavailable/Error)")
        mbm_t = self._counter(uuid, "total").update(reading.mbm_total, now)
        mbm_l = self._counter(uuid, "local").update(reading.mbm_local, now)
        for name, raw, value in (("mbm_total_bytes", reading.mbm_total, mbm_t),
                                 ("mbm_local_bytes", reading.mbm_local, mbm_l)):
            if raw and value.cumulative is None:
                self.nodata(uuid, f"{name} gave no value (Unavailable/Error/Unassigned)")
        return InstanceMeters(total, domains, percent, mbm_t.cumulative, mbm_l.cumulative,
                              mbm_t.rate, mbm_l.rate)

    def close(self) -> None:
        with self.lock:
            self.backend.close()
