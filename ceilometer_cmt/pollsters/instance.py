"""Per-instance meters: cache occupancy and memory bandwidth."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from ceilometer import sample
from ceilometer.compute.pollsters import util
from ceilometer.polling import plugin_base

from ceilometer_cmt.monitor import InstanceMeters
from ceilometer_cmt.pollsters import runtime

LOG = logging.getLogger(__name__)


class _InstancePollster(plugin_base.PollsterBase):
    meter: str
    sample_type: str
    unit: str
    value: Callable[[InstanceMeters], float | int | None]

    def setup_environment(self) -> None:
        self.rt = runtime.get_runtime(self.conf)
        if self.rt.monitor is None:
            raise plugin_base.ExtensionLoadError(
                f"{self.meter}: no usable cache monitoring backend ({self.rt.why_off})")

    @property
    def default_discovery(self) -> str:
        return "local_instances"

    def get_samples(self, manager: Any, cache: dict[str, Any],
                    resources: list[Any]) -> Iterator[sample.Sample]:
        try:
            result = runtime.cycle(self.rt, cache, resources)
        except Exception:
            LOG.exception("%s: cache monitoring cycle failed", self.meter)
            return
        for instance in resources:
            try:
                meters = result.instances.get(instance.id)
                if meters is None:
                    continue  # not running, or unmonitored (counted by the host meter)
                volume = type(self).value(meters)
                if volume is None:
                    continue  # the hardware gave nothing: no sample, never 0
                metadata: dict[str, Any] = {"cmt_backend": result.backend}
                if meters.occupancy_domains is not None:
                    metadata["cache_domains"] = {str(k): v for k, v in
                                                 sorted(meters.occupancy_domains.items())}
                yield util.make_sample_from_instance(
                    self.conf, instance, name=self.meter, type=self.sample_type,
                    unit=self.unit, volume=volume, additional_metadata=metadata)
            except Exception:
                LOG.exception("%s: cannot build the sample of instance %s", self.meter,
                              getattr(instance, "id", instance))


class CacheOccupancyPollster(_InstancePollster):
    meter, sample_type, unit = "cache.occupancy", sample.TYPE_GAUGE, "B"
    value = staticmethod(lambda m: m.occupancy)


class CacheOccupancyPercentPollster(_InstancePollster):
    meter, sample_type, unit = "cache.occupancy.percent", sample.TYPE_GAUGE, "%"
    value = staticmethod(lambda m: m.occupancy_percent)


class CPUL3CachePollster(_InstancePollster):
    """The name ceilometer <= 23 used, for migrating dashboards and alarms."""

    meter, sample_type, unit = "cpu_l3_cache", sample.TYPE_GAUGE, "B"
    value = staticmethod(lambda m: m.occupancy)


class MemoryBandwidthTotalBytesPollster(_InstancePollster):
    meter, sample_type, unit = "memory.bandwidth.total.bytes", sample.TYPE_CUMULATIVE, "B"
    value = staticmethod(lambda m: m.mbm_total_bytes)


class MemoryBandwidthLocalBytesPollster(_InstancePollster):
    meter, sample_type, unit = "memory.bandwidth.local.bytes", sample.TYPE_CUMULATIVE, "B"
    value = staticmethod(lambda m: m.mbm_local_bytes)


class MemoryBandwidthTotalPollster(_InstancePollster):
    meter, sample_type, unit = "memory.bandwidth.total", sample.TYPE_GAUGE, "B/s"
    value = staticmethod(lambda m: m.mbm_total_rate)


class MemoryBandwidthLocalPollster(_InstancePollster):
    meter, sample_type, unit = "memory.bandwidth.local", sample.TYPE_GAUGE, "B/s"
    value = staticmethod(lambda m: m.mbm_local_rate)
