"""Host topologies the resctrl simulator can imitate.

A topology lists the L3 caches (``mon_L3_XX`` directories, ``L3:`` schemata
ids) and the *monitoring domains* that RMIDs count in.  Without Sub-NUMA
Clustering the two are the same; with SNC each L3 holds several monitoring
domains (one per SNC node, ``mon_sub_L3_YY`` below ``mon_L3_XX``), exactly as
the kernel lays them out (``fs/resctrl/rdtgroup.c: mkdir_mondata_subdir``).

Presets (``--topology``):

``intel-2s``
    two sockets, one 30 MiB L3 each (ids 0, 1), 20-bit CBM, 16 CLOSIDs,
    176 RMIDs (Broadwell-EP like), 40 CPUs.
``amd-ccx``
    one socket of 8 CCX, a 32 MiB L3 each (ids 0-7), 16-bit CBM, 16 CLOSIDs,
    256 RMIDs, 64 CPUs (EPYC like).
``snc``
    two sockets with SNC-2: L3 ids 0, 1 (60 MiB each), SNC nodes 0-3
    (``mon_L3_00/mon_sub_L3_00``, ``mon_sub_L3_01``, ``mon_L3_01/mon_sub_L3_02``,
    ``mon_sub_L3_03``); ``num_rmids`` is the per-node share as the kernel shows it.
``amd-abmc``
    a Linux 6.18 host with AMD ABMC and BMEC, booted in ``mbm_event`` mode
    (``[XMON] rdt_get_l3_mon_config()`` turns it on when ABMC is present):
    two CCX, a 32 MiB L3 each (ids 0, 1, 8 CPUs each), 16-bit CBM, 16
    CLOSIDs, 256 RMIDs and 8 MBM counters per domain, 2 of them the root
    group's: the demo's default of 8 instances on this host outnumbers the 6
    free ones, so some instances get no counter.
``intel-aet``
    a Linux 7.0 Clearwater-Forest-like host: two packages of 144 E-cores, one
    L3 each (ids 0, 1, 108 MiB), L3 monitoring (``mbm_assign_mode`` reads
    ``[default]``: no assignable counters) and Intel AET telemetry
    (``info/PERF_PKG_MON``, ``mon_data/mon_PERF_PKG_00``/``_01``); L3_MON has
    1024 RMIDs, PERF_PKG_MON 576 (``intel_aet.c``), so 576 RMIDs can be used.
``arm64-mpam``
    an arm64 host with MPAM (doc/kernel-facts-mpam.md): two L3 caches (ids 0,
    1, 32 MiB, 32 CPUs each) with cache portion bitmaps (16 portions, every
    one hardware-shared), CSU and MBWU monitors; 32 PARTIDs and 16 PMGs, so
    32 CLOSIDs, 512 RMIDs (PARTID x PMG) and at most 15 monitor groups per
    control group; ``llc_occupancy`` and ``mbm_total_bytes`` only, the latter
    through 8 assignable counters per L3 in a fixed ``mbm_event`` mode; no
    BMEC, no ``MB`` schema.

``Topology.write_sysfs(root)`` writes the matching
``devices/system/cpu/cpu*/cache/index3`` tree so that the plugin's sysfs
reader sees the same host as the simulator.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

MON_EVENTS = ("llc_occupancy", "mbm_total_bytes", "mbm_local_bytes")
#: Intel AET's PERF_PKG events (``mon_event_all[]`` of fs/resctrl/monitor.c,
#: Linux 7.0), in event-id order
PERF_PKG_EVENTS = (
    "core_energy", "activity", "stalls_llc_hit", "c1_res", "unhalted_core_cycles",
    "stalls_llc_miss", "c6_res", "unhalted_ref_cycles", "uops_retired",
)


@dataclass(frozen=True)
class L3Cache:
    id: int
    size: int  # bytes
    cpus: tuple[int, ...]


@dataclass(frozen=True)
class MonDomain:
    """Where an RMID counts: an L3 (no SNC) or one SNC node of an L3."""

    id: int  # mon_L3_XX id without SNC, mon_sub_L3_YY id (NUMA node) with SNC
    l3_id: int
    size: int  # bytes of cache this domain's occupancy can reach
    cpus: tuple[int, ...]


@dataclass(frozen=True)
class Package:
    """A physical package: one ``mon_PERF_PKG_XX`` directory (Intel AET)."""

    id: int
    cpus: tuple[int, ...]


@dataclass(frozen=True)
class Topology:
    name: str
    l3: tuple[L3Cache, ...]
    mon_domains: tuple[MonDomain, ...]
    snc: bool
    num_rmids: int
    num_closids: int
    cbm_len: int
    min_cbm_bits: int = 1
    sparse_masks: bool = False
    #: hardware reports occupancy in multiples of this (CPUID upscaling factor)
    occupancy_granularity: int = 65536
    max_threshold_occupancy: int = 0
    mon_features: tuple[str, ...] = MON_EVENTS
    #: Linux >= 6.18: ``info/L3_MON/mbm_assign_mode`` exists
    assign_mode_file: bool = False
    #: ABMC counters per L3 monitoring domain; 0: counters are not assignable
    num_mbm_cntrs: int = 0
    #: BMEC: ``info/L3_MON/mbm_{total,local}_bytes_config`` (AMD)
    bmec: bool = False
    #: Intel AET: the packages of ``mon_PERF_PKG_XX``, and PERF_PKG_MON's num_rmids
    packages: tuple[Package, ...] = ()
    perf_pkg_rmids: int = 0
    #: ways hardware shares with other agents (``info/L3/shareable_bits``)
    shareable_bits: int = 0
    #: schemata as newer kernels print it: the name padded as on CDP-capable
    #: hardware without CDP, masks with ``%x`` (older presets: ``%0*x``)
    padded_schemata: bool = False
    #: ``mbm_cntr_assign_fixed`` (Linux 7.2 resctrl): the mode cannot change,
    #: ``event_filter`` is read-only, and an assignment to every domain
    #: carries on past a domain without a free counter
    assign_fixed: bool = False
    #: PMGs per PARTID when RMIDs depend on the CLOSID (arm64 MPAM,
    #: ``RESCTRL_RMID_DEPENDS_ON_CLOSID``); 0: RMIDs are global (x86)
    pmgs: int = 0
    #: ``uname -m`` of the host (what ``/proc/cpuinfo`` looks like)
    arch: str = "x86_64"

    @property
    def rmid_limit(self) -> int:
        """RMIDs groups can use: the smaller of the L3_MON and PERF_PKG_MON
        ``num_rmids`` ([DOC] resctrl.rst; ``resctrl_arch_system_num_rmid_idx()``)."""
        if self.packages:
            return min(self.num_rmids, self.perf_pkg_rmids)
        return self.num_rmids

    @property
    def cpus(self) -> tuple[int, ...]:
        return tuple(sorted(c for cache in self.l3 for c in cache.cpus))

    @property
    def l3_ids(self) -> tuple[int, ...]:
        """The L3 cache ids: ``mon_L3_XX`` directories, ``L3:`` schemata ids."""
        return tuple(cache.id for cache in self.l3)

    @property
    def cpus_by_l3(self) -> dict[int, tuple[int, ...]]:
        """L3 id -> the CPUs sharing it (sysfs ``index3/shared_cpu_list``)."""
        return {cache.id: cache.cpus for cache in self.l3}

    @property
    def cbm_mask(self) -> int:
        """``info/L3/cbm_mask`` as a number (the kernel shows it with ``%x``)."""
        return (1 << self.cbm_len) - 1

    def domains_of(self, l3_id: int) -> tuple[MonDomain, ...]:
        return tuple(d for d in self.mon_domains if d.l3_id == l3_id)

    def write_sysfs(self, sysfs_root: str) -> None:
        """Write ``devices/system/cpu/cpuN/cache/index3/*`` for this topology."""
        for cache in self.l3:
            shared = format_cpu_list(cache.cpus)
            for cpu in cache.cpus:
                base = os.path.join(
                    sysfs_root, "devices", "system", "cpu", f"cpu{cpu}", "cache", "index3"
                )
                os.makedirs(base, exist_ok=True)
                for name, value in (
                    ("level", "3"),
                    ("type", "Unified"),
                    ("size", f"{cache.size // 1024}K"),
                    ("shared_cpu_list", shared),
                    ("id", str(cache.id)),
                ):
                    with open(os.path.join(base, name), "w", encoding="ascii") as f:
                        f.write(value + "\n")


def format_cpu_list(cpus: tuple[int, ...] | list[int] | set[int] | frozenset[int]) -> str:
    """Kernel ``%*pbl`` syntax: ``0-3,8,10-11`` (empty set: empty string)."""
    ordered = sorted(set(cpus))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def format_cpu_mask(cpus: frozenset[int] | set[int], nr_cpus: int) -> str:
    """Kernel ``%*pb`` syntax: 32-bit hex chunks, comma separated, most
    significant first, the first chunk as wide as the remaining bits."""
    value = 0
    for c in cpus:
        value |= 1 << c
    chunks: list[str] = []
    bits = nr_cpus
    while bits > 0:
        width = bits % 32 or 32
        bits -= width
        chunk = (value >> bits) & ((1 << width) - 1)
        chunks.append(f"{chunk:0{(width + 3) // 4}x}")
    return ",".join(chunks) if chunks else "0"


def _intel_2s() -> Topology:
    mib = 1024 * 1024
    l3 = (
        L3Cache(0, 30 * mib, tuple(range(0, 10)) + tuple(range(20, 30))),
        L3Cache(1, 30 * mib, tuple(range(10, 20)) + tuple(range(30, 40))),
    )
    doms = tuple(MonDomain(c.id, c.id, c.size, c.cpus) for c in l3)
    return Topology(
        "intel-2s", l3, doms, snc=False, num_rmids=176, num_closids=16, cbm_len=20,
        min_cbm_bits=1, occupancy_granularity=49152, max_threshold_occupancy=1572864,
    )


def _amd_ccx(ccx: int = 8) -> Topology:
    mib = 1024 * 1024
    l3 = tuple(L3Cache(i, 32 * mib, tuple(range(i * 8, i * 8 + 8))) for i in range(ccx))
    doms = tuple(MonDomain(c.id, c.id, c.size, c.cpus) for c in l3)
    return Topology(
        "amd-ccx", l3, doms, snc=False, num_rmids=256, num_closids=16, cbm_len=16,
        min_cbm_bits=0, sparse_masks=True, occupancy_granularity=64,
        max_threshold_occupancy=2097152,
    )


def _snc() -> Topology:
    mib = 1024 * 1024
    l3 = (
        L3Cache(0, 60 * mib, tuple(range(0, 16))),
        L3Cache(1, 60 * mib, tuple(range(16, 32))),
    )
    doms = (
        MonDomain(0, 0, 30 * mib, tuple(range(0, 8))),
        MonDomain(1, 0, 30 * mib, tuple(range(8, 16))),
        MonDomain(2, 1, 30 * mib, tuple(range(16, 24))),
        MonDomain(3, 1, 30 * mib, tuple(range(24, 32))),
    )
    return Topology(
        "snc", l3, doms, snc=True, num_rmids=128, num_closids=15, cbm_len=15,
        min_cbm_bits=1, occupancy_granularity=106496, max_threshold_occupancy=4194304,
    )


def _amd_abmc() -> Topology:
    mib = 1024 * 1024
    l3 = tuple(L3Cache(i, 32 * mib, tuple(range(i * 8, i * 8 + 8))) for i in range(2))
    doms = tuple(MonDomain(c.id, c.id, c.size, c.cpus) for c in l3)
    return Topology(
        "amd-abmc", l3, doms, snc=False, num_rmids=256, num_closids=16, cbm_len=16,
        min_cbm_bits=0, sparse_masks=True, occupancy_granularity=64,
        max_threshold_occupancy=2097152, assign_mode_file=True, num_mbm_cntrs=8, bmec=True,
    )


def _intel_aet() -> Topology:
    mib = 1024 * 1024
    l3 = tuple(L3Cache(i, 108 * mib, tuple(range(i * 144, i * 144 + 144))) for i in range(2))
    doms = tuple(MonDomain(c.id, c.id, c.size, c.cpus) for c in l3)
    return Topology(
        "intel-aet", l3, doms, snc=False, num_rmids=1024, num_closids=16, cbm_len=12,
        min_cbm_bits=1, occupancy_granularity=110592, max_threshold_occupancy=1105920,
        assign_mode_file=True, packages=tuple(Package(c.id, c.cpus) for c in l3),
        perf_pkg_rmids=576,
    )


def _arm64_mpam() -> Topology:
    """doc/kernel-facts-mpam.md: ``num_closids`` is PARTIDs, ``num_rmids``
    PARTIDs x PMGs, ``cbm_mask`` the portions, ``min_cbm_bits`` 1, sparse
    masks, every bit in ``shareable_bits``; the realloc threshold is the L3
    size over ``num_rmids`` (``update_rmid_limits()``)."""
    mib = 1024 * 1024
    partids, pmgs = 32, 16
    l3 = tuple(L3Cache(i, 32 * mib, tuple(range(i * 32, i * 32 + 32))) for i in range(2))
    doms = tuple(MonDomain(c.id, c.id, c.size, c.cpus) for c in l3)
    return Topology(
        "arm64-mpam", l3, doms, snc=False, num_rmids=partids * pmgs, num_closids=partids,
        cbm_len=16, min_cbm_bits=1, sparse_masks=True, occupancy_granularity=64,
        max_threshold_occupancy=32 * mib // (partids * pmgs),
        mon_features=("llc_occupancy", "mbm_total_bytes"), assign_mode_file=True,
        num_mbm_cntrs=8, shareable_bits=0xFFFF, padded_schemata=True, assign_fixed=True,
        pmgs=pmgs, arch="aarch64",
    )


PRESETS = {"intel-2s": _intel_2s, "amd-ccx": _amd_ccx, "snc": _snc, "amd-abmc": _amd_abmc,
           "intel-aet": _intel_aet, "arm64-mpam": _arm64_mpam}


def get_topology(name: str) -> Topology:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(
            f"unknown topology {name!r}; choose one of {', '.join(sorted(PRESETS))}"
        ) from None
