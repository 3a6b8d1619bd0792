"""Pure parsers for what libvirt reports about caches.

Two inputs, both exactly as libvirt produces them:

- one record of ``virConnectGetAllDomainStats`` (a flat ``{key: value}``
  mapping of typed parameters) with the groups
  ``VIR_DOMAIN_STATS_CPU_TOTAL`` (resctrl cache monitors),
  ``VIR_DOMAIN_STATS_MEMORY`` (resctrl memory bandwidth monitors) and
  ``VIR_DOMAIN_STATS_PERF`` (perf events ``cmt``/``mbmt``/``mbml``);
- the ``virConnectGetCapabilities`` XML, whose ``<host><cache>`` lists the
  cache banks and the resctrl monitor capacity.

Key names (libvirt ``docs/manpages/virsh.rst`` "domstats", written by
``qemuDomainGetStatsCpuCache``, ``qemuDomainGetStatsMemoryBandwidth`` and
``qemuDomainGetStatsPerf`` in ``src/qemu/qemu_driver.c``)::

    cpu.cache.monitor.count                         uint
    cpu.cache.monitor.<n>.name / .vcpus             string
    cpu.cache.monitor.<n>.bank.count                uint
    cpu.cache.monitor.<n>.bank.<i>.id               uint   (host cache id)
    cpu.cache.monitor.<n>.bank.<i>.bytes            ullong (LLC occupancy)
    memory.bandwidth.monitor.count                  uint
    memory.bandwidth.monitor.<n>.name / .vcpus      string
    memory.bandwidth.monitor.<n>.node.count         uint
    memory.bandwidth.monitor.<n>.node.<i>.id        uint
    memory.bandwidth.monitor.<n>.node.<i>.bytes.local / .bytes.total  ullong
    perf.cmt / perf.mbmt / perf.mbml                ullong (only when enabled)

A key that is absent stays ``None`` all the way to the reading: never 0.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass

from ceilometer_cmt.readings import ALL_DOMAINS, CacheDomain, HostCache, InstanceReading

#: libvirt's ``virDomainStatsTypes`` bits this backend asks for
#: (include/libvirt/libvirt-domain.h).
VIR_DOMAIN_STATS_STATE = 1 << 0
VIR_DOMAIN_STATS_CPU_TOTAL = 1 << 1
VIR_DOMAIN_STATS_PERF = 1 << 6
VIR_DOMAIN_STATS_MEMORY = 1 << 8
STATS_GROUPS = (VIR_DOMAIN_STATS_STATE | VIR_DOMAIN_STATS_CPU_TOTAL
                | VIR_DOMAIN_STATS_PERF | VIR_DOMAIN_STATS_MEMORY)

#: ``virDomainState`` values (include/libvirt/libvirt-domain.h) in which a
#: domain has a qemu process.
VIR_DOMAIN_RUNNING = 1
VIR_DOMAIN_BLOCKED = 2
VIR_DOMAIN_PAUSED = 3
ACTIVE_STATES = frozenset({VIR_DOMAIN_RUNNING, VIR_DOMAIN_BLOCKED, VIR_DOMAIN_PAUSED})

#: ``state.state`` is a typed parameter of type int (virDomainStatsGetState
#: adds it with virTypedParamsAddInt): a C int.
_INT_MAX = 2**31 - 1


def _domain_state(v: object) -> int | None:
    """A ``state.state`` value as a ``virDomainState`` number; None if it cannot be one."""
    # bool is an int subclass; the enum has no negative member.
    if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= _INT_MAX:
        return v
    return None


def is_active(state: object) -> bool:
    """Whether a record's ``state.state`` leaves the domain active (with a qemu process).

    The one rule every caller uses, on the raw value or on
    :attr:`DomainCacheStats.state` (the same answer for both):

    - RUNNING, BLOCKED, PAUSED: active.
    - any other ``virDomainState`` number (NOSTATE, SHUTDOWN, SHUTOFF,
      CRASHED, PMSUSPENDED, and numbers a newer libvirt may add): not active.
    - no value (the key is missing: the record did not say), and a value that
      cannot be a ``virDomainState`` (not an int, a bool, a negative number,
      more than a C int holds): the record did not say either. Active: only a
      state the record does say takes a domain out; the record's cache keys,
      if any, then decide.
    """
    s = _domain_state(state)
    return s is None or s in ACTIVE_STATES

CACHE = "cpu.cache.monitor"
MBW = "memory.bandwidth.monitor"

REASON_NO_DATA = ("libvirt reports no cache data for this domain: no <cachetune><monitor> "
                  "nor <memorytune><monitor> configured and perf event cmt not enabled")


@dataclass(frozen=True)
class BankStat:
    id: int | None
    bytes: int | None


@dataclass(frozen=True)
class StatsCacheMonitor:
    """One ``cpu.cache.monitor.<n>``; ``banks`` is None when its count is missing."""

    name: str | None
    vcpus: str | None
    banks: tuple[BankStat, ...] | None


@dataclass(frozen=True)
class NodeStat:
    id: int | None
    bytes_local: int | None
    bytes_total: int | None


@dataclass(frozen=True)
class BandwidthMonitor:
    """One ``memory.bandwidth.monitor.<n>``; ``nodes`` None when its count is missing."""

    name: str | None
    vcpus: str | None
    nodes: tuple[NodeStat, ...] | None


@dataclass(frozen=True)
class DomainCacheStats:
    """The cache-related part of one domain's stats record.

    ``cache_monitors``/``bandwidth_monitors`` are None when the record has no
    ``.count`` key at all (group not supported or not requested), an empty
    tuple when the domain has no monitor. ``state`` is the ``virDomainState``
    number, None when the record has none (see :func:`is_active`).
    """

    state: int | None = None
    cache_monitors: tuple[StatsCacheMonitor, ...] | None = None
    bandwidth_monitors: tuple[BandwidthMonitor, ...] | None = None
    perf_cmt: int | None = None
    perf_mbmt: int | None = None
    perf_mbml: int | None = None

    @property
    def has_cache_data(self) -> bool:
        return bool(self.cache_monitors) or self.perf_cmt is not None

    @property
    def has_data(self) -> bool:
        return (self.has_cache_data or bool(self.bandwidth_monitors)
                or self.perf_mbmt is not None or self.perf_mbml is not None)


def _uint(params: Mapping[str, object], key: str) -> int | None:
    v = params.get(key)
    # bool is an int subclass; libvirt never sends one for these keys.
    if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        return v
    return None


def _str(params: Mapping[str, object], key: str) -> str | None:
    v = params.get(key)
    return v if isinstance(v, str) else None


#: Upper bound on counts taken from a record: a garbage count must not make
#: the parser loop for ever.
_MAX_COUNT = 4096


def _count(params: Mapping[str, object], key: str) -> int | None:
    n = _uint(params, key)
    return n if n is not None and n <= _MAX_COUNT else None


def parse_cache_monitors(params: Mapping[str, object]) -> tuple[StatsCacheMonitor, ...] | None:
    count = _count(params, f"{CACHE}.count")
    if count is None:
        return None
    monitors = []
    for n in range(count):
        p = f"{CACHE}.{n}"
        nbanks = _count(params, f"{p}.bank.count")
        banks = None if nbanks is None else tuple(
            BankStat(_uint(params, f"{p}.bank.{i}.id"), _uint(params, f"{p}.bank.{i}.bytes"))
            for i in range(nbanks))
        monitors.append(StatsCacheMonitor(_str(params, f"{p}.name"), _str(params, f"{p}.vcpus"),
                                     banks))
    return tuple(monitors)


def parse_bandwidth_monitors(params: Mapping[str, object]
                             ) -> tuple[BandwidthMonitor, ...] | None:
    count = _count(params, f"{MBW}.count")
    if count is None:
        return None
    monitors = []
    for n in range(count):
        p = f"{MBW}.{n}"
        nnodes = _count(params, f"{p}.node.count")
        nodes = None if nnodes is None else tuple(
            NodeStat(_uint(params, f"{p}.node.{i}.id"),
                     _uint(params, f"{p}.node.{i}.bytes.local"),
                     _uint(params, f"{p}.node.{i}.bytes.total"))
            for i in range(nnodes))
        monitors.append(BandwidthMonitor(_str(params, f"{p}.name"), _str(params, f"{p}.vcpus"),
                                         nodes))
    return tuple(monitors)


def monitors_in(params: Mapping[str, object]) -> int:
    """Cache monitors of one record, for ``cache.monitors.used``: its resctrl
    monitors plus one for a perf ``cmt`` event, counted as the parsers take
    them (a count or value they refuse counts nothing); 0 when not active."""
    n = (_count(params, f"{CACHE}.count") or 0) + (_uint(params, "perf.cmt") is not None)
    return n if n and is_active(params.get("state.state")) else 0


#: Keys whose absence means a record has no cache data at all (fast path:
#: on a stock host no domain has any of them).
MARKERS = frozenset({f"{CACHE}.count", f"{MBW}.count", "perf.cmt", "perf.mbmt", "perf.mbml"})


def has_cache_keys(params: Mapping[str, object]) -> bool:
    """True when a record holds any key this module reads (besides the state)."""
    return not params.keys().isdisjoint(MARKERS)


def parse_domain_stats(params: Mapping[str, object]) -> DomainCacheStats:
    """One ``getAllDomainStats`` record's params -> :class:`DomainCacheStats`."""
    if not has_cache_keys(params):
        return DomainCacheStats(state=_domain_state(params.get("state.state")))
    return DomainCacheStats(
        state=_domain_state(params.get("state.state")),
        cache_monitors=parse_cache_monitors(params),
        bandwidth_monitors=parse_bandwidth_monitors(params),
        perf_cmt=_uint(params, "perf.cmt"),
        perf_mbmt=_uint(params, "perf.mbmt"),
        perf_mbml=_uint(params, "perf.mbml"),
    )


def occupancy_by_bank(monitors: tuple[StatsCacheMonitor, ...]) -> dict[int, int | None]:
    """Bytes per host cache id, summed over the domain's monitors.

    A bank whose bytes are missing makes that cache id None (a partial sum
    would under-report). A monitor whose bank list or a bank id is missing
    cannot be placed, so every cache id becomes None.
    """
    out: dict[int, int | None] = {}
    unplaceable = False
    for mon in monitors:
        if mon.banks is None:
            unplaceable = True
            continue
        for bank in mon.banks:
            if bank.id is None:
                unplaceable = True
                continue
            if bank.id not in out:
                out[bank.id] = bank.bytes
            else:
                prev = out[bank.id]
                out[bank.id] = None if prev is None or bank.bytes is None else prev + bank.bytes
    if unplaceable:
        return dict.fromkeys(out, None) if out else {ALL_DOMAINS: None}
    return out


def to_reading(stats: DomainCacheStats, counter_prefix: str) -> InstanceReading:
    """Raw values of one domain as the monitor layer wants them.

    ``counter_prefix`` must change whenever the hardware counters restart
    (the backend uses the libvirt domain id, which changes at every start),
    so that the monitor can carry an MBM offset.
    """
    reading = InstanceReading({}, {}, {})
    if stats.cache_monitors:
        reading.occupancy = occupancy_by_bank(stats.cache_monitors)
    elif stats.perf_cmt is not None:
        # perf intel_cqm sums every package: a host-wide value.
        reading.occupancy = {ALL_DOMAINS: stats.perf_cmt}
    if stats.bandwidth_monitors:
        for n, mon in enumerate(stats.bandwidth_monitors):
            label = mon.name if mon.name is not None else f"#{n}"
            if mon.nodes is None:
                reading.mbm_total[f"{counter_prefix}/{label}"] = None
                reading.mbm_local[f"{counter_prefix}/{label}"] = None
                continue
            for i, node in enumerate(mon.nodes):
                nid = str(node.id) if node.id is not None else f"#{i}"
                key = f"{counter_prefix}/{label}/{nid}"
                reading.mbm_total[key] = node.bytes_total
                reading.mbm_local[key] = node.bytes_local
    else:
        if stats.perf_mbmt is not None:
            reading.mbm_total[f"{counter_prefix}/perf"] = stats.perf_mbmt
        if stats.perf_mbml is not None:
            reading.mbm_local[f"{counter_prefix}/perf"] = stats.perf_mbml
    return reading


def state_reason(state: object) -> str | None:
    """The reason for a domain whose ``state.state`` is not :func:`is_active`, else None."""
    if is_active(state):
        return None
    return f"domain not running (libvirt state {state})"


def no_data_reason(stats: DomainCacheStats) -> str:
    """Why a domain record carries nothing this backend can use."""
    reason = state_reason(stats.state)
    if reason is not None:
        return reason
    if stats.cache_monitors == () and stats.bandwidth_monitors in (None, ()):
        return ("no cache monitor configured in the domain XML "
                "(<cputune><cachetune><monitor>) and perf event cmt not enabled")
    return REASON_NO_DATA


# --------------------------------------------------------------------------
# capabilities

_UNITS = {"B": 1, "bytes": 1, "KiB": 1024, "K": 1024, "k": 1024, "MiB": 1024**2,
          "M": 1024**2, "GiB": 1024**3, "G": 1024**3, "TiB": 1024**4, "T": 1024**4,
          "PiB": 1024**5, "EiB": 1024**6}
_TYPES = {"both": "Unified", "data": "Data", "code": "Instruction"}


def _attr_int(el: ET.Element, name: str) -> int | None:
    v = (el.get(name) or "").strip()
    # ASCII digits only: int() refuses "²" (isdigit) and more than 4300 digits
    if not (v.isascii() and v.isdigit()) or len(v) > 20:
        return None
    return int(v)


def parse_capabilities_cache(xml_text: str, level: int = 3) -> HostCache | None:
    """``<capabilities><host><cache>`` -> HostCache (``source="libvirt"``).

    Banks of ``level`` that hold data (type ``both`` or ``data``) become
    cache domains; ``maxMonitors`` of the ``<monitor>`` of that level
    (a child of ``<cache>``; also accepted inside a ``<bank>``) gives the
    monitor count. Returns None when the XML has no such bank (old libvirt,
    or a host without resctrl/cache info). Raises ValueError on XML that
    does not parse.
    """
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as e:
        raise ValueError(f"capabilities XML does not parse: {e}") from e
    cache = root.find("./host/cache")
    if cache is None:
        return None
    domains: dict[int, CacheDomain] = {}
    for bank in cache.findall("./bank"):
        bid, blevel, size = _attr_int(bank, "id"), _attr_int(bank, "level"), \
            _attr_int(bank, "size")
        ctype = _TYPES.get(bank.get("type", "both"))
        unit = _UNITS.get(bank.get("unit", "B"))
        if bid is None or blevel != level or size is None or unit is None or ctype is None:
            continue
        if ctype == "Instruction" or bid in domains:
            continue
        domains[bid] = CacheDomain(bid, blevel, size * unit, ctype, bank.get("cpus", ""))
    if not domains:
        return None
    monitors_total = None
    for mon in cache.findall("./monitor") + cache.findall("./bank/monitor"):
        if _attr_int(mon, "level") in (None, level):
            monitors_total = _attr_int(mon, "maxMonitors")
            if monitors_total is not None:
                break
    return HostCache(tuple(domains[k] for k in sorted(domains)), monitors_total, "libvirt")
