"""Per-instance meters: cache occupancy and allocation, memory bandwidth.

One pollster class per meter of :mod:`ceilometer_cmt.meters` with
``per="instance"``, made from its row: the class name setup.cfg names, the
meter, sample type, unit, and the :class:`~ceilometer_cmt.monitor.InstanceMeters`
field the value comes from. They differ in nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from operator import attrgetter
from typing import Any

from ceilometer import sample
from ceilometer.compute.pollsters import util
from ceilometer.polling import plugin_base

from ceilometer_cmt import meters as table
from ceilometer_cmt.monitor import InstanceMeters
from ceilometer_cmt.pollsters import runtime

LOG = logging.getLogger(__name__)


class _InstancePollster(plugin_base.PollsterBase):
    meter: str
    sample_type: str
    unit: str
    value: Callable[[InstanceMeters], float | int | None]
    mbm = False  # an MBM meter: its samples carry the counter configuration
    allocation = False  # the L3 allocation: its samples carry each domain's share

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
                if self.mbm and result.mbm_config is not None:
                    # what the counters count: compare like with like
                    metadata["mbm_config"] = dict(result.mbm_config)
                if self.allocation and meters.allocation_domains is not None:
                    metadata["allocation_domains"] = {
                        str(k): v for k, v in sorted(meters.allocation_domains.items())}
                if meters.occupancy_domains is not None:
                    metadata["cache_domains"] = {str(k): v for k, v in
                                                 sorted(meters.occupancy_domains.items())}
                yield util.make_sample_from_instance(
                    self.conf, instance, name=self.meter, type=self.sample_type,
                    unit=self.unit, volume=volume, additional_metadata=metadata)
            except Exception:
                LOG.exception("%s: cannot build the sample of instance %s", self.meter,
                              getattr(instance, "id", instance))


def _pollster(m: table.Meter) -> type[_InstancePollster]:
    reading, _, field = m.source.partition(".")
    if reading != "InstanceMeters" or field not in InstanceMeters.__dataclass_fields__:
        raise AssertionError(f"{m.name}: instance meters read InstanceMeters, not {m.source}")
    return type(m.pollster, (_InstancePollster,), {
        "__module__": __name__, "__qualname__": m.pollster,
        "__doc__": f"``{m.name}`` ({m.type}, {m.unit}): {m.summary}.",
        "meter": m.name, "sample_type": m.type, "unit": m.unit,
        "value": staticmethod(attrgetter(field)),
        "mbm": field.startswith("mbm_"),
        "allocation": field.startswith("allocation_"),
    })


# setup.cfg's entry points name these module attributes.
for _m in table.of(table.INSTANCE):
    globals()[_m.pollster] = _pollster(_m)
del _m
