"""What ``ceilometer-cmt top`` shows, as plain values (pure: no terminal, no rich).

:func:`build_view` turns one polling cycle's sample dicts into a
:class:`HostView`: the host's cache and monitors, and one :class:`InstanceRow`
per running instance, monitored or with the reason why not. :func:`sort_rows`
orders the rows (the ``--sort`` keys, :data:`SORT_KEYS`), :func:`view_json` is
the ``--json`` document, and the text helpers (:func:`human_bytes`,
:func:`pct`, :func:`domain_breakdown`, :func:`short_uuids`) make the cells
:mod:`ceilometer_cmt.cmd.top.render` puts in its table.

Which meters are read, and into which row field, comes from the meter table
(:mod:`ceilometer_cmt.meters`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ceilometer_cmt import meters
from ceilometer_cmt.readings import ALL_DOMAINS

INSTANCE_METERS = meters.names(meters.INSTANCE)
HOST_METERS = meters.names(meters.HOST)


@dataclass(frozen=True)
class InstanceRow:
    """One running instance as this cycle's samples show it. None = no sample."""

    uuid: str
    name: str | None = None  # Nova display name
    domain_name: str | None = None  # libvirt domain name
    monitored: bool = True
    reason: str | None = None  # why not monitored
    occupancy: int | None = None  # bytes, all domains
    occupancy_percent: float | None = None  # of its busiest domain
    domains: Mapping[int, int] = field(default_factory=dict)  # domain id -> bytes
    mbm_total_rate: float | None = None  # B/s
    mbm_local_rate: float | None = None
    mbm_total_bytes: int | None = None  # cumulative
    mbm_local_bytes: int | None = None
    # Intel AET telemetry (hosts that have it)
    energy_core: float | None = None  # J, cumulative
    power_core: float | None = None  # W
    cpu_ipc: float | None = None  # uops per cycle
    llc_miss_stall_ratio: float | None = None  # LLC-miss stall cycles per cycle
    # L3 allocation (CAT): percent of the ways it may fill, 100 when uncapped
    allocation_percent: float | None = None

    @property
    def capped(self) -> bool:
        """Its threads may fill fewer than all ways (the guard capped it, or
        a libvirt ``<cachetune>``)."""
        return self.allocation_percent is not None and self.allocation_percent < 100.0

    @property
    def status(self) -> str:
        if not self.monitored:
            return f"not monitored: {self.reason}" if self.reason else "not monitored"
        if self.occupancy is None and self.mbm_total_bytes is None \
                and self.mbm_local_bytes is None:
            return "monitored, no data"
        # a reason with samples: monitored in part (an MBM event without a
        # counter in resctrl's mbm_event mode)
        return f"monitored in part: {self.reason}" if self.reason else "monitored"


@dataclass(frozen=True)
class HostView:
    host: str | None
    backend: str | None
    cache_size: int | None
    domain_sizes: Mapping[int, int]  # L3 domain id -> bytes
    monitors_total: int | None
    monitors_used: int | None
    unmonitored: int | None
    rows: tuple[InstanceRow, ...]
    timestamp: str | None = None
    cycle: int | None = None
    capped: int | None = None  # instances in the guard's cap groups

    def domain_percent(self, domain: int, value: int) -> float | None:
        size = self.cache_size if domain == ALL_DOMAINS else self.domain_sizes.get(domain)
        return 100.0 * value / size if size else None


def _int(v: Any) -> int | None:
    return None if v is None else int(v)


def _float(v: Any) -> float | None:
    return None if v is None else float(v)


def row_values(volume: Callable[[str], Any]) -> dict[str, Any]:
    """An instance's :class:`InstanceRow` values, given its sample volume of each meter.

    Each per-instance meter fills the row field named like the
    :class:`~ceilometer_cmt.monitor.InstanceMeters` field it is read from; byte
    counts are whole numbers. Two meters read ``occupancy``: the first in the
    table with a sample (``cache.occupancy``, then ``cpu_l3_cache``) gives it.
    """
    out: dict[str, Any] = {}
    for m in meters.of(meters.INSTANCE):
        if out.get(m.field) is None:
            out[m.field] = (_int if m.unit == "B" else _float)(volume(m.name))
    return out


def build_view(samples: Iterable[Mapping[str, Any]],
               names: Mapping[str, str] | None = None) -> HostView:
    """One cycle's published samples -> the view (pure).

    ``names`` (uuid -> display name) fills names of instances that have no
    instance sample this cycle (the unmonitored ones only show their uuid).
    """
    per: dict[str, dict[str, Mapping[str, Any]]] = {}
    host_samples: dict[str, Mapping[str, Any]] = {}
    for s in samples:
        meter = s["counter_name"]
        if meter in HOST_METERS:
            host_samples[meter] = s
        elif meter in INSTANCE_METERS:
            per.setdefault(str(s["resource_id"]), {})[meter] = s

    def meta(s: Mapping[str, Any] | None) -> Mapping[str, Any]:
        return (s or {}).get("resource_metadata") or {}

    size_s = host_samples.get(meters.CACHE_SIZE.name)
    domain_sizes = {int(d["id"]): int(d["size"])
                    for d in meta(size_s).get("cache_domains", []) if "id" in d and "size" in d}
    un_s = host_samples.get(meters.CACHE_INSTANCES_UNMONITORED.name)
    unmonitored: dict[str, str] = dict(meta(un_s).get("unmonitored") or {})
    host = next((str(s["resource_id"]) for s in host_samples.values()), None)
    backend = next((str(meta(s)["cmt_backend"]) for s in
                    [*host_samples.values(), *(x for m in per.values() for x in m.values())]
                    if "cmt_backend" in meta(s)), None)
    names = names or {}
    rows = []
    for uuid, ms in per.items():
        def vol(meter: str, ms: dict[str, Mapping[str, Any]] = ms) -> Any:
            s = ms.get(meter)
            return None if s is None else s["counter_volume"]

        any_meta = meta(next(iter(ms.values())))
        domains_meta = next((meta(s).get("cache_domains") for s in ms.values()
                             if meta(s).get("cache_domains") is not None), None) or {}
        rows.append(InstanceRow(
            uuid=uuid, name=any_meta.get("display_name") or names.get(uuid),
            domain_name=any_meta.get("name"), monitored=True,  # it has samples
            reason=unmonitored.get(uuid),
            domains={int(k): int(v) for k, v in domains_meta.items() if v is not None},
            **row_values(vol)))
    for uuid, reason in unmonitored.items():
        if uuid not in per:
            rows.append(InstanceRow(uuid=uuid, name=names.get(uuid), monitored=False,
                                    reason=str(reason)))
    stamps = [str(s["timestamp"]) for s in [*host_samples.values(),
                                            *(x for m in per.values() for x in m.values())]
              if s.get("timestamp")]
    return HostView(
        host=host, backend=backend,
        cache_size=_int(size_s["counter_volume"]) if size_s else None,
        domain_sizes=domain_sizes,
        monitors_total=_int(host_samples[meters.CACHE_MONITORS_TOTAL.name]["counter_volume"])
        if meters.CACHE_MONITORS_TOTAL.name in host_samples else None,
        monitors_used=_int(host_samples[meters.CACHE_MONITORS_USED.name]["counter_volume"])
        if meters.CACHE_MONITORS_USED.name in host_samples else None,
        unmonitored=_int(un_s["counter_volume"]) if un_s else None,
        rows=sort_rows(rows), timestamp=max(stamps) if stamps else None,
        capped=_int(host_samples[meters.CACHE_GUARD_CAPPED.name]["counter_volume"])
        if meters.CACHE_GUARD_CAPPED.name in host_samples else None)


#: --sort keys: the value and whether larger comes first
SORT_KEYS: dict[str, tuple[Callable[[InstanceRow], Any], bool]] = {
    "occupancy-percent": (lambda r: r.occupancy_percent, True),
    "occupancy": (lambda r: r.occupancy, True),
    "mbm-total": (lambda r: r.mbm_total_rate, True),
    "mbm-local": (lambda r: r.mbm_local_rate, True),
    "power": (lambda r: r.power_core, True),
    "ipc": (lambda r: r.cpu_ipc, True),
    "allocation": (lambda r: r.allocation_percent, False),  # the most capped first
    "name": (lambda r: r.name or "", False),
    "uuid": (lambda r: r.uuid, False),
}


def sort_rows(rows: Iterable[InstanceRow], key: str = "occupancy-percent"
              ) -> tuple[InstanceRow, ...]:
    """Sorted by ``key``; rows without a value (None) always come last, then by uuid."""
    get, desc = SORT_KEYS[key]
    by_uuid = sorted(rows, key=lambda r: r.uuid)
    have = [r for r in by_uuid if get(r) is not None]
    missing = [r for r in by_uuid if get(r) is None]
    return tuple(sorted(have, key=get, reverse=desc)) + tuple(missing)


# ----------------------------------------------------------------- text

def human_bytes(n: float | None, suffix: str = "") -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            text = f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
            return text + suffix
        value /= 1024
    return str(n)  # pragma: no cover


def pct(p: float | None) -> str:
    return "-" if p is None else f"{p:.1f}%"


def number(v: float | None, fmt: str = ".2f", suffix: str = "") -> str:
    return "-" if v is None else f"{v:{fmt}}{suffix}"


def has_allocation(view: HostView) -> bool:
    """Whether any row has an L3 allocation (a host with CAT: ``top`` shows
    the column then)."""
    return any(r.allocation_percent is not None for r in view.rows)


def has_telemetry(view: HostView) -> bool:
    """Whether any row has an Intel AET value (``top`` shows their columns then)."""
    return any(r.energy_core is not None or r.power_core is not None
               or r.cpu_ipc is not None or r.llc_miss_stall_ratio is not None
               for r in view.rows)


def domain_breakdown(view: HostView, row: InstanceRow) -> str:
    """One line per domain; with more than two domains, those at 0 B are counted."""
    parts = []
    shown = row.domains if len(row.domains) <= 2 else {
        k: v for k, v in row.domains.items() if v}
    for dom, value in sorted(shown.items()):
        label = "host" if dom == ALL_DOMAINS else f"L3#{dom}"
        parts.append(f"{label} {human_bytes(value)} {pct(view.domain_percent(dom, value))}")
    if len(shown) < len(row.domains):
        parts.append(f"{len(row.domains) - len(shown)} more at 0 B")
    return "\n".join(parts) or "-"


def view_json(view: HostView) -> dict[str, Any]:
    """The view as one JSON-ready document (``--once --json``)."""
    return {
        "host": view.host, "backend": view.backend, "timestamp": view.timestamp,
        "cycle": view.cycle,
        "cache": {"size": view.cache_size,
                  "domains": [{"id": k, "size": v} for k, v in sorted(view.domain_sizes.items())]},
        "monitors": {"total": view.monitors_total, "used": view.monitors_used},
        "unmonitored": view.unmonitored, "capped": view.capped,
        "instances": [{
            "uuid": r.uuid, "name": r.name, "domain_name": r.domain_name,
            "monitored": r.monitored, "reason": r.reason, "status": r.status,
            "occupancy_bytes": r.occupancy, "occupancy_percent": r.occupancy_percent,
            "domains": [{"id": d, "bytes": b, "percent": view.domain_percent(d, b)}
                        for d, b in sorted(r.domains.items())],
            "mbm_total_bytes_per_second": r.mbm_total_rate,
            "mbm_local_bytes_per_second": r.mbm_local_rate,
            "mbm_total_bytes": r.mbm_total_bytes, "mbm_local_bytes": r.mbm_local_bytes,
            "energy_core_joules": r.energy_core, "power_core_watts": r.power_core,
            "cpu_ipc": r.cpu_ipc, "llc_miss_stall_ratio": r.llc_miss_stall_ratio,
            "allocation_percent": r.allocation_percent, "capped": r.capped,
        } for r in view.rows],
    }


def short_uuids(rows: Sequence[InstanceRow]) -> dict[str, str]:
    """uuid -> its first 8 characters, or ``…`` and its last 8 when those are not unique."""
    heads = [r.uuid[:8] for r in rows]
    if len(set(heads)) == len(heads):
        return {r.uuid: r.uuid[:8] for r in rows}
    return {r.uuid: "\u2026" + r.uuid[-8:] for r in rows}
