"""THE table of this plugin's meters, the only module that spells a meter name.

One :class:`Meter` row per meter: its name, sample type and unit, whether it
is per instance or per host, the reading field its value comes from, the
pollster class ``setup.cfg`` names, and where Gnocchi keeps it. Generated from
the table:

* the pollster classes (``pollsters/instance.py``, ``pollsters/host.py``);
* the meters ``ceilometer-cmt top`` shows (:mod:`ceilometer_cmt.cmd.top`);
* the metrics merged into ``gnocchi_resources.yaml``
  (:mod:`ceilometer_cmt.cmd.gnocchi_resources`);
* ``etc/polling.yaml``: ``python -m ceilometer_cmt.meters > etc/polling.yaml``;
* the one-source polling file ``ceilometer-cmt poll``, ``top`` and the demo use
  when given none (written when they start).

What cannot be generated is checked by ``tests/unit/test_meters.py``: the
``ceilometer.poll.compute`` entry points in ``setup.cfg`` (ceilometer finds a
pollster only there), ``etc/polling.yaml``, and that no other module spells a
meter name.

Plain Python: no OpenStack import, so every layer may use it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from ceilometer_cmt.readings import (
    CORE_ENERGY,
    LLC_OCCUPANCY,
    MBM_LOCAL_BYTES,
    MBM_TOTAL_BYTES,
    STALLS_LLC_MISS,
    UNHALTED_CORE_CYCLES,
    UOPS_RETIRED,
)

#: ceilometer's sample types (``ceilometer.sample.TYPE_GAUGE``, ``TYPE_CUMULATIVE``)
GAUGE: Literal["gauge"] = "gauge"
CUMULATIVE: Literal["cumulative"] = "cumulative"

#: per instance: discovery ``local_instances``, resource id = the instance uuid;
#: per host: discovery ``local_node``, resource id = ``[DEFAULT] host``
Per = Literal["instance", "host"]
INSTANCE: Per = "instance"
HOST: Per = "host"

#: Gnocchi archive policies: ceilometer's own ``ceilometer-low-rate`` (rate:mean
#: on a cumulative counter), and ours: ceilometer-low's resolution with ``max``
#: besides ``mean`` (defined in :data:`ceilometer_cmt.cmd.gnocchi_resources.OUR_ARCHIVE_POLICIES`).
RATE_POLICY = "ceilometer-low-rate"
PEAK_POLICY = "ceilometer-cmt-low"


@dataclass(frozen=True)
class Meter:
    """One meter of this plugin."""

    name: str  # the meter name, also the name of its entry point
    type: Literal["gauge", "cumulative"]  # the sample type
    unit: str
    per: Per  # per instance or per host
    # Where the value comes from: ``<reading class>.<field>``. Instance meters
    # read ``monitor.InstanceMeters``; host meters ``readings.HostCache`` or
    # ``monitor.CycleResult`` (``CycleResult.unmonitored``: how many entries).
    source: str
    pollster: str  # the class in ceilometer_cmt/pollsters/<per>.py that setup.cfg names
    resource_type: str  # the Gnocchi resource type
    archive_policy: str | None  # None: the file's archive_policy_default
    summary: str  # one line (etc/polling.yaml's comment)
    needs_backend: bool = True  # False: reported also without a monitoring backend
    # The backend events (resctrl value files) the value is computed from; only
    # these are read when only this meter is polled: each read of a resctrl L3
    # value makes the kernel run code on a CPU of that domain. () = none (host
    # meters read info files only); None = not stated (a test refuses it).
    events: tuple[str, ...] | None = None

    @property
    def field(self) -> str:
        """The reading's field (``occupancy`` of ``InstanceMeters.occupancy``)."""
        return self.source.rpartition(".")[2]

    @property
    def module(self) -> str:
        return f"ceilometer_cmt.pollsters.{self.per}"

    @property
    def entry_point(self) -> str:
        """``setup.cfg``'s ``ceilometer.poll.compute`` line for this meter."""
        return f"{self.name} = {self.module}:{self.pollster}"


# ------------------------------------------------------------ per instance
CACHE_OCCUPANCY = Meter(
    name="cache.occupancy", type=GAUGE, unit="B", per=INSTANCE,
    source="InstanceMeters.occupancy", pollster="CacheOccupancyPollster",
    resource_type="instance", archive_policy=PEAK_POLICY,
    summary="LLC bytes summed over L3 domains",
    events=(LLC_OCCUPANCY,))
CACHE_OCCUPANCY_PERCENT = Meter(
    name="cache.occupancy.percent", type=GAUGE, unit="%", per=INSTANCE,
    source="InstanceMeters.occupancy_percent", pollster="CacheOccupancyPercentPollster",
    resource_type="instance", archive_policy=PEAK_POLICY,
    summary="max over domains of occupancy/size (alarm on this)",
    events=(LLC_OCCUPANCY,))
CPU_L3_CACHE = Meter(
    name="cpu_l3_cache", type=GAUGE, unit="B", per=INSTANCE,
    source="InstanceMeters.occupancy", pollster="CPUL3CachePollster",
    resource_type="instance", archive_policy=PEAK_POLICY,
    summary="same as cache.occupancy, ceilometer <= 23 name",
    events=(LLC_OCCUPANCY,))
MEMORY_BANDWIDTH_TOTAL_BYTES = Meter(
    name="memory.bandwidth.total.bytes", type=CUMULATIVE, unit="B", per=INSTANCE,
    source="InstanceMeters.mbm_total_bytes", pollster="MemoryBandwidthTotalBytesPollster",
    resource_type="instance", archive_policy=RATE_POLICY,
    summary="MBM total bytes (Gnocchi rate:mean)",
    events=(MBM_TOTAL_BYTES,))
MEMORY_BANDWIDTH_LOCAL_BYTES = Meter(
    name="memory.bandwidth.local.bytes", type=CUMULATIVE, unit="B", per=INSTANCE,
    source="InstanceMeters.mbm_local_bytes", pollster="MemoryBandwidthLocalBytesPollster",
    resource_type="instance", archive_policy=RATE_POLICY,
    summary="MBM local bytes (Gnocchi rate:mean)",
    events=(MBM_LOCAL_BYTES,))
MEMORY_BANDWIDTH_TOTAL = Meter(
    name="memory.bandwidth.total", type=GAUGE, unit="B/s", per=INSTANCE,
    source="InstanceMeters.mbm_total_rate", pollster="MemoryBandwidthTotalPollster",
    resource_type="instance", archive_policy=PEAK_POLICY,
    summary="rate between two cycles (none on the first)",
    events=(MBM_TOTAL_BYTES,))
MEMORY_BANDWIDTH_LOCAL = Meter(
    name="memory.bandwidth.local", type=GAUGE, unit="B/s", per=INSTANCE,
    source="InstanceMeters.mbm_local_rate", pollster="MemoryBandwidthLocalPollster",
    resource_type="instance", archive_policy=PEAK_POLICY,
    summary="rate between two cycles (none on the first)",
    events=(MBM_LOCAL_BYTES,))
CACHE_ALLOCATION_PERCENT = Meter(
    name="cache.allocation.percent", type=GAUGE, unit="%", per=INSTANCE,
    source="InstanceMeters.allocation_percent", pollster="CacheAllocationPercentPollster",
    resource_type="instance", archive_policy=PEAK_POLICY,
    summary="share of L3 ways it may fill (CAT; 100 uncapped)",
    events=())

# Intel AET telemetry (resctrl PERF_PKG, Linux 7.0): only where the host has the event
ENERGY_CORE = Meter(
    name="energy.core", type=CUMULATIVE, unit="J", per=INSTANCE,
    source="InstanceMeters.energy_core", pollster="EnergyCorePollster",
    resource_type="instance", archive_policy=RATE_POLICY,
    summary="AET core_energy over packages (Gnocchi rate:mean)",
    events=(CORE_ENERGY,))
POWER_CORE = Meter(
    name="power.core", type=GAUGE, unit="W", per=INSTANCE,
    source="InstanceMeters.power_core", pollster="PowerCorePollster",
    resource_type="instance", archive_policy=PEAK_POLICY,
    summary="core power between two cycles (none on the first)",
    events=(CORE_ENERGY,))
CPU_IPC = Meter(
    name="cpu.ipc", type=GAUGE, unit="uop/cycle", per=INSTANCE,
    source="InstanceMeters.cpu_ipc", pollster="CPUIPCPollster",
    resource_type="instance", archive_policy=PEAK_POLICY,
    summary="uops retired per core cycle between two cycles",
    events=(UOPS_RETIRED, UNHALTED_CORE_CYCLES))
CACHE_LLC_MISS_STALL_RATIO = Meter(
    name="cache.llc.miss.stall.ratio", type=GAUGE, unit="ratio", per=INSTANCE,
    source="InstanceMeters.llc_miss_stall_ratio", pollster="CacheLLCMissStallRatioPollster",
    resource_type="instance", archive_policy=PEAK_POLICY,
    summary="LLC-miss stall cycles per core cycle between two cycles",
    events=(STALLS_LLC_MISS, UNHALTED_CORE_CYCLES))

# ---------------------------------------------------------------- per host
CACHE_SIZE = Meter(
    name="cache.size", type=GAUGE, unit="B", per=HOST,
    source="HostCache.size", pollster="CacheSizePollster",
    resource_type="host", archive_policy=None,
    summary="sum of the L3 domain sizes", needs_backend=False,
    events=())
CACHE_MONITORS_TOTAL = Meter(
    name="cache.monitors.total", type=GAUGE, unit="monitor", per=HOST,
    source="HostCache.monitors_total", pollster="CacheMonitorsTotalPollster",
    resource_type="host", archive_policy=None,
    summary="monitoring ids (RMIDs) per domain (AET: the smaller num_rmids)",
    events=())
CACHE_MONITORS_USED = Meter(
    name="cache.monitors.used", type=GAUGE, unit="monitor", per=HOST,
    source="CycleResult.monitors_used", pollster="CacheMonitorsUsedPollster",
    resource_type="host", archive_policy=None,
    summary="monitor groups that exist now, anyone's",
    events=())
CACHE_INSTANCES_UNMONITORED = Meter(
    name="cache.instances.unmonitored", type=GAUGE, unit="instance", per=HOST,
    source="CycleResult.unmonitored", pollster="CacheInstancesUnmonitoredPollster",
    resource_type="host", archive_policy=None,
    summary="running instances without a monitor",
    events=())
CACHE_MONITORS_REMOVED_BY_OTHERS = Meter(
    name="cache.monitors.removed_by_others", type=CUMULATIVE, unit="monitor", per=HOST,
    source="CycleResult.removed_by_others", pollster="CacheMonitorsRemovedByOthersPollster",
    resource_type="host", archive_policy=None,
    summary="our monitor groups another tool removed (pqos -r)",
    events=())
CACHE_GUARD_CAPPED = Meter(
    name="cache.guard.capped", type=GAUGE, unit="instance", per=HOST,
    source="CycleResult.capped", pollster="CacheGuardCappedPollster",
    resource_type="host", archive_policy=None,
    summary="instances in the guard's cap groups",
    events=())
# MBM counter assignment (resctrl mbm_event mode, AMD ABMC, Linux 6.18): only in that mode
MEMORY_BANDWIDTH_COUNTERS_TOTAL = Meter(
    name="memory.bandwidth.counters.total", type=GAUGE, unit="counter", per=HOST,
    source="CycleResult.mbm_counters", pollster="MemoryBandwidthCountersTotalPollster",
    resource_type="host", archive_policy=None,
    summary="assignable MBM counters, all L3 domains",
    events=())
MEMORY_BANDWIDTH_COUNTERS_AVAILABLE = Meter(
    name="memory.bandwidth.counters.available", type=GAUGE, unit="counter", per=HOST,
    source="CycleResult.mbm_counters_available",
    pollster="MemoryBandwidthCountersAvailablePollster",
    resource_type="host", archive_policy=None,
    summary="free MBM counters, all L3 domains",
    events=())

#: every meter, in the order of setup.cfg, polling.yaml and gnocchi_resources.yaml
TABLE: tuple[Meter, ...] = (
    CACHE_OCCUPANCY, CACHE_OCCUPANCY_PERCENT, CPU_L3_CACHE,
    MEMORY_BANDWIDTH_TOTAL_BYTES, MEMORY_BANDWIDTH_LOCAL_BYTES,
    MEMORY_BANDWIDTH_TOTAL, MEMORY_BANDWIDTH_LOCAL, CACHE_ALLOCATION_PERCENT,
    ENERGY_CORE, POWER_CORE, CPU_IPC, CACHE_LLC_MISS_STALL_RATIO,
    CACHE_SIZE, CACHE_MONITORS_TOTAL, CACHE_MONITORS_USED, CACHE_INSTANCES_UNMONITORED,
    CACHE_MONITORS_REMOVED_BY_OTHERS, CACHE_GUARD_CAPPED,
    MEMORY_BANDWIDTH_COUNTERS_TOTAL, MEMORY_BANDWIDTH_COUNTERS_AVAILABLE,
)


def of(per: Per) -> tuple[Meter, ...]:
    """The meters per instance or per host, in table order."""
    return tuple(m for m in TABLE if m.per == per)


def names(per: Per | None = None) -> tuple[str, ...]:
    return tuple(m.name for m in (TABLE if per is None else of(per)))


def events_of(meters: Iterable[Meter]) -> frozenset[str]:
    """The backend events that ``meters`` need, all together."""
    return frozenset(e for m in meters for e in (m.events or ()))


# ------------------------------------------------------------ polling.yaml

@dataclass(frozen=True)
class PollingSource:
    """One source of etc/polling.yaml: all the meters of one kind."""

    name: str
    per: Per | None  # None: every meter
    interval: int  # seconds
    comment: tuple[str, ...]  # the lines above it


POLLING_SOURCES: tuple[PollingSource, ...] = (
    PollingSource("cmt_cache", INSTANCE, 60, (
        "Per instance (discovery local_instances; resource = the Nova instance uuid).",
        "Keep these meters in ONE source: one backend read per polling cycle serves",
        "them all, shared through the cycle's cache. 60 s matches the 5-minute",
        "points of Gnocchi's ceilometer-low policies (five samples per point) and",
        "the bytes-per-interval reading of rate:mean on the cumulative counters.",
    )),
    PollingSource("cmt_host", HOST, 600, (
        "Per host (discovery local_node; resource = [DEFAULT] host, Gnocchi type `host`).",
        "These change only when instances come and go or hardware changes: every 10 min.",
    )),
)

#: what ``ceilometer-cmt poll``, ``top`` and the demo poll when given no polling
#: file: every meter in one source, so that one backend read serves them all
ALL_IN_ONE_SOURCE = PollingSource("cmt_all", None, 60, (
    "Every meter of this plugin in one source (ceilometer-cmt poll, top, demo).",
))

POLLING_HEADER = """\
---
# ceilometer-polling sources for the ceilometer-cmt meters
# (ceilometer-polling --polling-namespaces compute, on each compute node).
#
# A polling.yaml REPLACES ceilometer's default one: append these two sources to
# the `sources:` list of the file your agent already uses ([polling] cfg_file,
# default /etc/ceilometer/polling.yaml) rather than installing this file as is,
# unless these are the only meters you want.
#
# Samples reach Gnocchi only if gnocchi_resources.yaml maps them: write the
# merged file with
#   ceilometer-cmt gnocchi-resources -o /etc/ceilometer/gnocchi_resources.yaml
#
# Written from the meter table, ceilometer_cmt/meters.py, by
#   python -m ceilometer_cmt.meters > etc/polling.yaml
# (edit the table, not this file; tests/unit/test_meters.py checks they agree).
"""


def polling_yaml(sources: Sequence[PollingSource] = POLLING_SOURCES,
                 table: Sequence[Meter] = TABLE) -> str:
    """The text of etc/polling.yaml: one source per kind, each meter with its comment."""
    width = max(len(m.name) for m in table) + 2
    lines = ["sources:"]
    for i, src in enumerate(sources):
        if i:
            lines.append("")
        lines += [f"  # {c}" for c in src.comment]
        lines += [f"  - name: {src.name}", f"    interval: {src.interval}", "    meters:"]
        lines += [f"      - {m.name.ljust(width)}# {m.type}, {m.unit}: {m.summary}"
                  for m in table if src.per is None or m.per == src.per]
    return POLLING_HEADER + "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ceilometer_cmt.meters``: print etc/polling.yaml."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args:
        print("usage: python -m ceilometer_cmt.meters > etc/polling.yaml", file=sys.stderr)
        return 2
    sys.stdout.write(polling_yaml())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
