"""Host meters: the L3 cache itself, its monitors, instances left unmonitored."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from ceilometer import sample
from ceilometer.polling import plugin_base

from ceilometer_cmt.monitor import CycleResult
from ceilometer_cmt.pollsters import runtime
from ceilometer_cmt.readings import HostCache
from ceilometer_cmt.sysfs_cache import HostCacheReader

LOG = logging.getLogger(__name__)


class _HostPollster(plugin_base.PollsterBase):
    meter: str
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
            return self.rt.monitor.host
        return self.sysfs.get()

    def cycle(self, manager: Any, cache: dict[str, Any]) -> CycleResult:
        """This cycle's read; run discovery ourselves when no per-instance pollster did."""
        if runtime.CACHE_KEY not in cache:
            instances = manager.discover(["local_instances"])
            return runtime.cycle(self.rt, cache, instances)
        return cache[runtime.CACHE_KEY]  # type: ignore[no-any-return]

    def measure(self, manager: Any, cache: dict[str, Any]
                ) -> tuple[float | int | None, dict[str, Any]]:
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
                name=self.meter, type=sample.TYPE_GAUGE, unit=self.unit, volume=volume,
                user_id=None, project_id=None, resource_id=host,
                resource_metadata={"host_name": host, **metadata})


class CacheSizePollster(_HostPollster):
    meter, unit = "cache.size", "B"
    needs_backend = False

    def measure(self, manager: Any, cache: dict[str, Any]
                ) -> tuple[float | int | None, dict[str, Any]]:
        hc = self.host_cache()
        domains = [{"id": d.id, "size": d.size, "level": d.level, "cpus": d.cpus}
                   for d in hc.domains]
        return hc.size, {"cache_domains": domains, "source": hc.source}


class CacheMonitorsTotalPollster(_HostPollster):
    meter, unit = "cache.monitors.total", "monitor"

    def measure(self, manager: Any, cache: dict[str, Any]
                ) -> tuple[float | int | None, dict[str, Any]]:
        assert self.rt.monitor is not None
        return self.host_cache().monitors_total, {"cmt_backend": self.rt.monitor.backend.name}


class CacheMonitorsUsedPollster(_HostPollster):
    meter, unit = "cache.monitors.used", "monitor"

    def measure(self, manager: Any, cache: dict[str, Any]
                ) -> tuple[float | int | None, dict[str, Any]]:
        result = self.cycle(manager, cache)
        return result.monitors_used, {"cmt_backend": result.backend}


class CacheInstancesUnmonitoredPollster(_HostPollster):
    meter, unit = "cache.instances.unmonitored", "instance"

    def measure(self, manager: Any, cache: dict[str, Any]
                ) -> tuple[float | int | None, dict[str, Any]]:
        result = self.cycle(manager, cache)
        return len(result.unmonitored), {"cmt_backend": result.backend,
                                         "unmonitored": dict(sorted(result.unmonitored.items()))}
