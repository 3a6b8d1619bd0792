"""Host meters: the L3 cache itself, its monitors, instances left unmonitored
or capped by the guard.

One pollster class per meter of :mod:`ceilometer_cmt.meters` with
``per="host"``, made from its row. :data:`MEASURE` says, for each reading
field a row names (``source``), how the value and its metadata are read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from ceilometer import sample
from ceilometer.polling import plugin_base

from ceilometer_cmt import meters as table
from ceilometer_cmt.linux.sysfs_cache import HostCacheReader
from ceilometer_cmt.monitor import CycleResult
from ceilometer_cmt.pollsters import runtime
from ceilometer_cmt.readings import HostCache

LOG = logging.getLogger(__name__)

Measured = tuple[float | int | None, dict[str, Any]]


class _HostPollster(plugin_base.PollsterBase):
    meter: str
    sample_type: str
    unit: str
    needs_backend = True

    def setup_environment(self) -> None:
        self.rt = runtime.get_runtime(self.conf)
        # Without a backend the topology comes from sysfs, walked again only
        # when the online CPUs change or every few cycles (see HostCacheReader).
        self.sysfs = HostCacheReader(self.rt.settings.sysfs_root)
        if self.needs_backend and self.rt.monitor is None:
            raise plugin_base.ExtensionLoadError(
                f"{self.meter}: no usable cache monitoring backend ({self.rt.why_off})")

    @property
    def default_discovery(self) -> str:
        return "local_node"

    def host_cache(self) -> HostCache:
        if self.rt.monitor is not None:
            return self.rt.monitor.host_cache
        return self.sysfs.get()

    def cycle(self, manager: Any, cache: dict[str, Any]) -> CycleResult:
        """This cycle's read; run discovery ourselves when no per-instance pollster did."""
        if runtime.CACHE_KEY not in cache:
            instances = manager.discover(["local_instances"])
            return runtime.cycle(self.rt, cache, instances, counting=False)
        return cache[runtime.CACHE_KEY]  # type: ignore[no-any-return]

    def measure(self, manager: Any, cache: dict[str, Any]) -> Measured:
        """(value, metadata) of this meter now; None: no sample. One of MEASURE."""
        raise NotImplementedError

    def get_samples(self, manager: Any, cache: dict[str, Any],
                    resources: list[Any]) -> Iterator[sample.Sample]:
        try:
            volume, metadata = self.measure(manager, cache)
        except Exception:
            LOG.exception("%s: cannot measure", self.meter)
            return
        if volume is None:
            return
        host = self.conf.host
        for _resource in resources[:1]:  # local_node yields this host once
            yield sample.Sample(
                name=self.meter, type=self.sample_type, unit=self.unit, volume=volume,
                user_id=None, project_id=None, resource_id=host,
                resource_metadata={"host_name": host, **metadata})


def _cache_size(p: _HostPollster, manager: Any, cache: dict[str, Any]) -> Measured:
    hc = p.host_cache()
    domains = [{"id": d.id, "size": d.size, "level": d.level, "cpus": d.cpus}
               for d in hc.domains]
    return hc.size, {"cache_domains": domains, "source": hc.source}


def _monitors_total(p: _HostPollster, manager: Any, cache: dict[str, Any]) -> Measured:
    assert p.rt.monitor is not None
    return p.host_cache().monitors_total, {"cmt_backend": p.rt.monitor.backend.name}


def _monitors_used(p: _HostPollster, manager: Any, cache: dict[str, Any]) -> Measured:
    result = p.cycle(manager, cache)
    return result.monitors_used, {"cmt_backend": result.backend}


def _unmonitored(p: _HostPollster, manager: Any, cache: dict[str, Any]) -> Measured:
    """Instances without any sample; the metadata gives every reason, also of
    instances monitored in part (an MBM event without a counter in
    ``mbm_event`` mode, their occupancy still sampled)."""
    result = p.cycle(manager, cache)
    count = sum(1 for u in result.unmonitored if u not in result.instances)
    return count, {"cmt_backend": result.backend,
                   "unmonitored": dict(sorted(result.unmonitored.items()))}


def _removed_by_others(p: _HostPollster, manager: Any, cache: dict[str, Any]) -> Measured:
    result = p.cycle(manager, cache)
    return result.removed_by_others, {"cmt_backend": result.backend}


def _capped(p: _HostPollster, manager: Any, cache: dict[str, Any]) -> Measured:
    result = p.cycle(manager, cache)
    return result.capped, {"cmt_backend": result.backend}


def _per_domain(values: dict[int, int] | None, backend: str) -> Measured:
    """The sum over L3 domains, and each domain's value in the metadata."""
    if values is None:
        return None, {}
    return sum(values.values()), {"cmt_backend": backend, "counter_domains": {
        str(d): n for d, n in sorted(values.items())}}


def _mbm_counters(p: _HostPollster, manager: Any, cache: dict[str, Any]) -> Measured:
    result = p.cycle(manager, cache)
    return _per_domain(result.mbm_counters, result.backend)


def _mbm_counters_available(p: _HostPollster, manager: Any, cache: dict[str, Any]) -> Measured:
    result = p.cycle(manager, cache)
    return _per_domain(result.mbm_counters_available, result.backend)


#: a host meter's ``source`` -> how its value and metadata are read
MEASURE: dict[str, Callable[[_HostPollster, Any, dict[str, Any]], Measured]] = {
    "HostCache.size": _cache_size,
    "HostCache.monitors_total": _monitors_total,
    "CycleResult.monitors_used": _monitors_used,
    "CycleResult.unmonitored": _unmonitored,
    "CycleResult.removed_by_others": _removed_by_others,
    "CycleResult.capped": _capped,
    "CycleResult.mbm_counters": _mbm_counters,
    "CycleResult.mbm_counters_available": _mbm_counters_available,
}


def _pollster(m: table.Meter) -> type[_HostPollster]:
    return type(m.pollster, (_HostPollster,), {
        "__module__": __name__, "__qualname__": m.pollster,
        "__doc__": f"``{m.name}`` ({m.type}, {m.unit}): {m.summary}.",
        "meter": m.name, "sample_type": m.type, "unit": m.unit,
        "needs_backend": m.needs_backend, "measure": MEASURE[m.source],
    })


# setup.cfg's entry points name these module attributes.
for _m in table.of(table.HOST):
    globals()[_m.pollster] = _pollster(_m)
del _m
