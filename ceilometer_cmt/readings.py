"""Values that backends return and the monitor consumes.

Plain dataclasses, no OpenStack imports. ``None`` always means "the hardware
gave no value"; it is never replaced by 0.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

#: resctrl ``L3_MON`` events (``info/L3_MON/mon_features``, value files
#: ``mon_data/mon_L3_XX/<event>``), as the kernel names them; the only place
#: the plugin spells them (tests/unit/test_meters.py checks). The simulator
#: and the fake kernel trees spell their own: they play the kernel.
LLC_OCCUPANCY = "llc_occupancy"
MBM_TOTAL_BYTES = "mbm_total_bytes"
MBM_LOCAL_BYTES = "mbm_local_bytes"
L3_EVENTS = (LLC_OCCUPANCY, MBM_TOTAL_BYTES, MBM_LOCAL_BYTES)
#: The MBM events a counter can be assigned to, in the kernel's order: the
#: kernel's own ``rdtgroup_assign_cntrs()`` (fs/resctrl/monitor.c) assigns
#: ``mbm_total_bytes`` before ``mbm_local_bytes``.
MBM_EVENTS = (MBM_TOTAL_BYTES, MBM_LOCAL_BYTES)

#: Intel AET (resctrl ``PERF_PKG``, Linux 7.0) events the plugin reads, as the
#: kernel names them in ``info/PERF_PKG_MON/mon_features`` and
#: ``mon_data/mon_PERF_PKG_XX/``. ``core_energy`` is fixed point (Joules);
#: the others are integer counts.
CORE_ENERGY = "core_energy"
UNHALTED_CORE_CYCLES = "unhalted_core_cycles"
UOPS_RETIRED = "uops_retired"
STALLS_LLC_MISS = "stalls_llc_miss"
TELEMETRY_EVENTS = (CORE_ENERGY, UNHALTED_CORE_CYCLES, UOPS_RETIRED, STALLS_LLC_MISS)
#: a fixed-point telemetry value is held as an integer count of 10**-9 units
#: (nanojoules): the kernel prints at most 9 decimals, so it is exact
NANO = 1_000_000_000

#: One instance's telemetry for one cycle: event -> counter key -> raw value
#: (an integer; fixed-point events in 10**-9 units). Only the events the host
#: has; a ``None`` value: that counter gave no data. Keys name one counter as
#: in :class:`InstanceReading` (a recreated group gets new keys).
TelemetryReading = dict[str, dict[str, int | None]]

#: Occupancy key for a value that covers all L3 domains together (perf
#: ``intel_cqm`` and libvirt sum every package): its percent is taken against
#: the sum of all L3 domain sizes.
ALL_DOMAINS = -1


@dataclass(frozen=True)
class CacheDomain:
    """One cache instance (an L3 per socket, per SNC node or per AMD CCX)."""

    id: int
    level: int
    size: int  # bytes
    type: str = "Unified"
    cpus: str = ""  # kernel cpu list syntax, e.g. "0-9,20-29"


@dataclass(frozen=True)
class HostCache:
    """What the host says about its L3 and its monitoring ids."""

    domains: tuple[CacheDomain, ...]
    monitors_total: int | None = None  # RMIDs (per domain); None when unknown
    source: str = "sysfs"

    @property
    def size(self) -> int | None:
        return sum(d.size for d in self.domains) if self.domains else None

    @functools.cached_property
    def sizes(self) -> dict[int, int]:
        """Domain id (and ALL_DOMAINS, the total) -> bytes."""
        out = {d.id: d.size for d in self.domains}
        if self.domains:
            out[ALL_DOMAINS] = sum(out.values())
        return out

    def domain_size(self, domain_id: int) -> int | None:
        return self.sizes.get(domain_id)


class InstanceRef(NamedTuple):
    """A running Nova instance as the pollsters hand it to a backend (a tuple:
    backends compare a cycle's list with the last one in C)."""

    uuid: str
    domain_name: str  # libvirt domain name (OS-EXT-SRV-ATTR:instance_name)
    #: ``cmt:mbm_priority`` of the instance's metadata: who gets MBM counters
    #: first where they are assigned (``mbm_event`` mode); higher first
    mbm_priority: int = 0


@dataclass(slots=True)
class InstanceReading:
    """Raw values of one instance for one cycle.

    ``occupancy`` maps an L3 domain id (or :data:`ALL_DOMAINS`) to bytes.
    ``mbm_total``/``mbm_local`` map a *counter key* to the raw byte counter.
    A counter key names one hardware counter (e.g. ``"<group>/<domain>"``);
    a backend that recreates a counter must give it a new key, so that the
    monitor can carry an offset. An empty dict means the feature is absent;
    a ``None`` value means the counter gave no data this cycle.
    """

    # No defaults: the generated __init__ is then ~15% cheaper, which shows in
    # the perf backend, which builds one reading per instance per cycle.
    occupancy: dict[int, int | None]
    mbm_total: dict[str, int | None]
    mbm_local: dict[str, int | None]


class Allocation(NamedTuple):
    """The share of L3 ways an instance may fill (Intel CAT / AMD L3 QoS), from
    the schemata of the control groups its threads are in."""

    percent: float  # the smallest share over the domains it holds cache in
    domains: dict[int, float]  # L3 domain id -> percent of its ways


@dataclass
class BackendCycle:
    """Everything one backend read produced."""

    readings: dict[str, InstanceReading] = field(default_factory=dict)
    unmonitored: dict[str, str] = field(default_factory=dict)  # uuid -> reason
    monitors_used: int | None = None
    #: uuid -> Intel AET telemetry; empty on hosts without it
    telemetry: dict[str, TelemetryReading] = field(default_factory=dict)
    #: MBM counter assignment (``mbm_event`` mode, AMD ABMC): counters per L3
    #: domain (``num_mbm_cntrs``) and the free ones (``available_mbm_cntrs``);
    #: None when the host is not in that mode
    mbm_counters: dict[int, int] | None = None
    mbm_counters_available: dict[int, int] | None = None
    #: what the MBM counters count (assign mode, event filters or BMEC masks),
    #: for sample metadata; None when the host tells nothing of it
    mbm_config: dict[str, str] | None = None
    #: our monitor groups removed by someone else since the backend started
    #: (``pqos -r`` removes every monitor group); None: the backend cannot tell
    removed_by_others: int | None = None
    #: uuid -> its L3 allocation; only on hosts with CAT (resctrl ``info/L3``)
    allocation: dict[str, Allocation] = field(default_factory=dict)
    #: instances in the guard's cap groups (``<prefix>cap-<share>``); None:
    #: the backend cannot tell
    capped: int | None = None


@dataclass(frozen=True)
class Decision:
    """Whether a backend may run on this host: usable, or the stated reason why
    not (selection's verdicts, ``ceilometer-cmt probe``, the start-up log)."""

    backend: str
    usable: bool
    reason: str


class Backend(Protocol):
    """What every backend (resctrl, perf, libvirt) offers the monitor."""

    name: str

    def host_cache(self) -> HostCache:
        """The host's L3 domains and monitor count."""
        ...

    def sync(self, instances: Sequence[InstanceRef]) -> BackendCycle:
        """Start/stop monitoring so that exactly ``instances`` are watched,
        then read them. Must not raise for one bad instance: report it in
        ``unmonitored`` instead."""
        ...

    def close(self) -> None:
        """Release what this process holds (fds, locks)."""
        ...
