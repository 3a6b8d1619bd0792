"""``ceilometer-cmt top``: a live per-instance view of cache occupancy and bandwidth.

It runs real polling cycles through ceilometer's polling manager with the
agent's own config files (:mod:`ceilometer_cmt.pollrun`), so the view shows
exactly the samples ceilometer would publish, whatever backend runs.

Two halves, kept apart so the view can be tested on real samples:

* :func:`build_view` (pure): one cycle's sample dicts -> :class:`HostView`
  (host cache, monitors, one :class:`InstanceRow` per running instance,
  monitored or with the reason why not); :func:`sort_rows`,
  :func:`render` (a ``rich`` renderable) and :func:`view_json`;
* :func:`watch`: the loop (poll, render, sleep) shared with ``ceilometer-cmt demo``.

Like the agent, ``top`` creates monitor groups with the plugin's prefix on a
resctrl host (the same groups: they are adopted, not duplicated).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TextIO

from ceilometer_cmt import meters, pollrun
from ceilometer_cmt.readings import HOST_WIDE

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

    @property
    def status(self) -> str:
        if not self.monitored:
            return f"not monitored: {self.reason}" if self.reason else "not monitored"
        if self.occupancy is None and self.mbm_total_bytes is None \
                and self.mbm_local_bytes is None:
            return "monitored, no data"
        return "monitored"


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

    def domain_percent(self, domain: int, value: int) -> float | None:
        size = self.cache_size if domain == HOST_WIDE else self.domain_sizes.get(domain)
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
    host_s: dict[str, Mapping[str, Any]] = {}
    for s in samples:
        meter = s["counter_name"]
        if meter in HOST_METERS:
            host_s[meter] = s
        elif meter in INSTANCE_METERS:
            per.setdefault(str(s["resource_id"]), {})[meter] = s

    def meta(s: Mapping[str, Any] | None) -> Mapping[str, Any]:
        return (s or {}).get("resource_metadata") or {}

    size_s = host_s.get(meters.CACHE_SIZE.name)
    domain_sizes = {int(d["id"]): int(d["size"])
                    for d in meta(size_s).get("cache_domains", []) if "id" in d and "size" in d}
    un_s = host_s.get(meters.CACHE_INSTANCES_UNMONITORED.name)
    unmonitored: dict[str, str] = dict(meta(un_s).get("unmonitored") or {})
    host = next((str(s["resource_id"]) for s in host_s.values()), None)
    backend = next((str(meta(s)["cmt_backend"]) for s in
                    [*host_s.values(), *(x for m in per.values() for x in m.values())]
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
            domain_name=any_meta.get("name"), monitored=uuid not in unmonitored,
            reason=unmonitored.get(uuid),
            domains={int(k): int(v) for k, v in domains_meta.items() if v is not None},
            **row_values(vol)))
    for uuid, reason in unmonitored.items():
        if uuid not in per:
            rows.append(InstanceRow(uuid=uuid, name=names.get(uuid), monitored=False,
                                    reason=str(reason)))
    stamps = [str(s["timestamp"]) for s in [*host_s.values(),
                                            *(x for m in per.values() for x in m.values())]
              if s.get("timestamp")]
    return HostView(
        host=host, backend=backend,
        cache_size=_int(size_s["counter_volume"]) if size_s else None,
        domain_sizes=domain_sizes,
        monitors_total=_int(host_s[meters.CACHE_MONITORS_TOTAL.name]["counter_volume"])
        if meters.CACHE_MONITORS_TOTAL.name in host_s else None,
        monitors_used=_int(host_s[meters.CACHE_MONITORS_USED.name]["counter_volume"])
        if meters.CACHE_MONITORS_USED.name in host_s else None,
        unmonitored=_int(un_s["counter_volume"]) if un_s else None,
        rows=sort_rows(rows), timestamp=max(stamps) if stamps else None)


#: --sort keys: the value and whether larger comes first
SORT_KEYS: dict[str, tuple[Callable[[InstanceRow], Any], bool]] = {
    "occupancy-percent": (lambda r: r.occupancy_percent, True),
    "occupancy": (lambda r: r.occupancy, True),
    "mbm-total": (lambda r: r.mbm_total_rate, True),
    "mbm-local": (lambda r: r.mbm_local_rate, True),
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


# ----------------------------------------------------------------- formats

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


def _pct(p: float | None) -> str:
    return "-" if p is None else f"{p:.1f}%"


def domain_breakdown(view: HostView, row: InstanceRow) -> str:
    """One line per domain; with more than two domains, those at 0 B are counted."""
    parts = []
    shown = row.domains if len(row.domains) <= 2 else {
        k: v for k, v in row.domains.items() if v}
    for dom, value in sorted(shown.items()):
        label = "host" if dom == HOST_WIDE else f"L3#{dom}"
        parts.append(f"{label} {human_bytes(value)} {_pct(view.domain_percent(dom, value))}")
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
        "unmonitored": view.unmonitored,
        "instances": [{
            "uuid": r.uuid, "name": r.name, "domain_name": r.domain_name,
            "monitored": r.monitored, "reason": r.reason, "status": r.status,
            "occupancy_bytes": r.occupancy, "occupancy_percent": r.occupancy_percent,
            "domains": [{"id": d, "bytes": b, "percent": view.domain_percent(d, b)}
                        for d, b in sorted(r.domains.items())],
            "mbm_total_bytes_per_second": r.mbm_total_rate,
            "mbm_local_bytes_per_second": r.mbm_local_rate,
            "mbm_total_bytes": r.mbm_total_bytes, "mbm_local_bytes": r.mbm_local_bytes,
        } for r in view.rows],
    }


def short_uuids(rows: Sequence[InstanceRow]) -> dict[str, str]:
    """uuid -> its first 8 characters, or ``…`` and its last 8 when those are not unique."""
    heads = [r.uuid[:8] for r in rows]
    if len(set(heads)) == len(heads):
        return {r.uuid: r.uuid[:8] for r in rows}
    return {r.uuid: "\u2026" + r.uuid[-8:] for r in rows}


def render(view: HostView, *, title: str = "ceilometer-cmt top", alert_percent: float = 30.0,
           footer: str | None = None, width: int | None = None) -> Any:
    """The view as a ``rich`` renderable (a header line and a table).

    ``width`` (the terminal's): below 150 columns uuids are shortened, below
    120 the per-domain column is left out and headers are terse.
    """
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    short = short_uuids(view.rows) if width is not None and width < 150 else None
    narrow = width is not None and width < 120
    doms = ", ".join(f"L3#{k} {human_bytes(v)}" for k, v in sorted(view.domain_sizes.items()))
    head = Text.assemble(
        (title, "bold"), f"  host {view.host or '?'}  backend {view.backend or 'none'}  ",
        f"L3 {human_bytes(view.cache_size)} ({doms or 'unknown'})  ",
        f"monitors {view.monitors_used if view.monitors_used is not None else '-'}"
        f"/{view.monitors_total if view.monitors_total is not None else '-'}  ",
        f"unmonitored {view.unmonitored if view.unmonitored is not None else '-'}",
        f"  cycle {view.cycle}" if view.cycle is not None else "",
        f"  {view.timestamp}" if view.timestamp else "")
    from rich import box

    table = Table(expand=False, show_lines=False, box=box.SIMPLE_HEAD if narrow else box.HEAVY_HEAD)
    table.add_column("instance", no_wrap=True, max_width=16 if narrow else None)
    table.add_column("uuid", no_wrap=True, style="dim")
    table.add_column("occupancy", justify="right", no_wrap=True)
    table.add_column("%L3" if narrow else "% busiest L3", justify="right", no_wrap=True)
    table.add_column("MBM total", justify="right", no_wrap=True)
    table.add_column("MBM local", justify="right", no_wrap=True)
    if not narrow:
        table.add_column("per domain", no_wrap=True)
    table.add_column("status", min_width=6, overflow="ellipsis", no_wrap=narrow)
    for r in view.rows:
        hot = r.occupancy_percent is not None and r.occupancy_percent >= alert_percent
        cells: list[Any] = [
            r.name or r.domain_name or "?", short[r.uuid] if short else r.uuid,
            human_bytes(r.occupancy),
            Text(_pct(r.occupancy_percent), style="bold red" if hot else ""),
            human_bytes(r.mbm_total_rate, "/s"), human_bytes(r.mbm_local_rate, "/s")]
        if not narrow:
            cells.append(domain_breakdown(view, r))
        status = r.status
        if narrow:
            status = {"monitored": "ok", "monitored, no data": "no data"}.get(
                status, status.replace("not monitored", "off"))
        cells.append(Text(status, style="green" if r.status == "monitored" else "yellow"))
        table.add_row(*cells)
    if not view.rows:
        table.add_row("(none)")
    parts: list[Any] = [head, table]
    if view.backend is None:
        parts.append(Text("No cache monitoring backend: per-instance meters are off on this "
                          "host. 'ceilometer-cmt probe' says why.", style="yellow"))
    if footer:
        parts.append(Text(footer, style="dim"))
    return Group(*parts)


# -------------------------------------------------------------------- loop

class Poller:
    """Real polling cycles on one ceilometer agent, with instance names remembered."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.names: dict[str, str] = {}
        self.cycles = 0

    def _discover_names(self) -> None:
        with contextlib.suppress(Exception):  # names are a nicety; never fail the view
            for r in self.agent.discover(["local_instances"]):
                name = getattr(r, "name", None)
                if name:
                    self.names[str(r.id)] = str(name)

    def poll(self) -> tuple[list[dict[str, Any]], HostView]:
        samples = pollrun.run_cycles(self.agent, 1)[0]
        self.cycles += 1
        for s in samples:
            name = (s.get("resource_metadata") or {}).get("display_name")
            if name and s["counter_name"] in INSTANCE_METERS:
                self.names[str(s["resource_id"])] = str(name)
        view = build_view(samples, self.names)
        if any(r.name is None for r in view.rows):
            self._discover_names()
            view = build_view(samples, self.names)
        return samples, replace(view, cycle=self.cycles)


def watch(agent: Any, *, interval: float, cycles: int | None = None,
          sort: str = "occupancy-percent", out: TextIO | None = None,
          mode: str = "live", title: str = "ceilometer-cmt top",
          footer: str | None = None, on_cycle: Callable[[HostView], None] | None = None
          ) -> HostView | None:
    """Poll ``cycles`` times (None: until interrupted), ``interval`` s apart.

    ``mode``: ``live`` (a refreshing rich view), ``print`` (one table per
    cycle, for a pipe), ``jsonl`` (every sample as one JSON line with its
    cycle number), ``views`` (each cycle's :func:`view_json` as one line),
    ``quiet``. Returns the last view.
    """
    out = out or sys.stdout
    poller = Poller(agent)
    last: HostView | None = None
    with _live(mode, out) as (show, width):
        n = 0
        while cycles is None or n < cycles:
            if n:
                time.sleep(interval)
            samples, view = poller.poll()
            last = replace(view, rows=sort_rows(view.rows, sort))
            n += 1
            if mode == "jsonl":  # one write per cycle: see demo.SignalSafeOut
                out.write("".join(
                    json.dumps({"cycle": n, **pollrun.sample_row(s)},
                               sort_keys=True, default=str) + "\n" for s in samples))
                out.flush()
            elif mode == "views":
                out.write(json.dumps(view_json(last), sort_keys=True) + "\n")
                out.flush()
            elif mode != "quiet":
                show(render(last, title=title, footer=footer, width=width()))
            if on_cycle is not None:
                on_cycle(last)
    return last


@contextlib.contextmanager
def _live(mode: str, out: TextIO
          ) -> Iterator[tuple[Callable[[Any], None], Callable[[], int | None]]]:
    """(show a renderable, the output's width now) for ``mode``."""
    if mode not in ("live", "print"):
        yield (lambda _r: None), (lambda: None)
        return
    from rich.console import Console

    console = Console(file=out)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(file=out, width=160)  # a pipe or a file: room for every column
    if mode == "print" or not console.is_terminal:
        yield console.print, (lambda: console.width)
        return
    from rich.live import Live

    with Live(console=console, auto_refresh=False, transient=False) as live:
        yield (lambda r: live.update(r, refresh=True)), (lambda: console.width)


def logging_conf(log_file: str) -> str:
    """A Python logging config (oslo.log ``log_config_append``) sending all to ``log_file``.

    It replaces oslo.log's handlers, stderr included, so nothing scribbles
    over a live view (pollrun turns ``use_stderr`` on for ``poll``).
    """
    return (
        "[loggers]\nkeys = root\n[handlers]\nkeys = file\n[formatters]\nkeys = plain\n"
        "[logger_root]\nlevel = INFO\nhandlers = file\n"
        f"[handler_file]\nclass = FileHandler\nargs = ({log_file!r},)\nformatter = plain\n"
        "[formatter_plain]\n"
        "format = %(asctime)s %(process)d %(levelname)s %(name)s [-] %(message)s\n"
    )


def write_log_config(directory: str, log_file: str) -> str:
    """Write :func:`logging_conf` and a ceilometer config file using it; returns the latter."""
    logging_path = os.path.join(directory, "logging.conf")
    with open(logging_path, "w", encoding="utf-8") as f:
        f.write(logging_conf(log_file))
    conf = os.path.join(directory, "log.conf")
    with open(conf, "w", encoding="utf-8") as f:
        f.write(f"[DEFAULT]\nlog_config_append = {logging_path}\n")
    return conf


# --------------------------------------------------------------------- CLI

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ceilometer-cmt top",
        description="Live per-instance L3 cache occupancy and memory bandwidth, from real "
                    "polling cycles with the agent's own configuration.")
    p.add_argument("--config-file", action="append", default=[],
                   help="ceilometer config file(s), as given to ceilometer-polling "
                        "(default: $CEILOMETER_CMT_CONFIG, else /etc/ceilometer/ceilometer.conf "
                        "when it exists)")
    pollrun.add_set_option(p, "backend=resctrl")
    p.add_argument("--interval", type=float, default=2.0,
                   help="seconds between polling cycles (default 2)")
    p.add_argument("--cycles", type=int, help="stop after N cycles (default, or 0: until Ctrl-C)")
    p.add_argument("--sort", choices=sorted(SORT_KEYS), default="occupancy-percent",
                   help="row order (default occupancy-percent, largest first)")
    p.add_argument("--once", action="store_true",
                   help="poll twice, --interval apart (bandwidth is a rate between two "
                        "reads), print the second cycle and exit")
    p.add_argument("--json", action="store_true",
                   help="with --once: one JSON document; else one per cycle (JSON lines)")
    p.add_argument("--log-file",
                   help="agent log file (default: the config's; with the live view on a "
                        "terminal a temporary file whose warnings are printed at exit)")
    return p


def default_config_files() -> list[str]:
    files = pollrun.env_config_files()
    if not files and os.path.exists("/etc/ceilometer/ceilometer.conf"):
        files = ["/etc/ceilometer/ceilometer.conf"]
    return files


def print_log_problems(path: str, out: TextIO) -> None:
    """WARNING/ERROR lines of an agent log, minus known harmless noise."""
    with contextlib.suppress(OSError), open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if (" WARNING " in line or " ERROR " in line) and "memcache" not in line:
                out.write(line)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.interval < 0 or (args.cycles is not None and args.cycles < 0):
        print("ceilometer-cmt top: --interval must be >= 0 and --cycles >= 0", file=sys.stderr)
        return 2
    if args.cycles == 0:
        args.cycles = None
    config_files = args.config_file or default_config_files()
    overrides = pollrun.cmt_overrides(args.set)
    live = not args.json and sys.stdout.isatty()
    # the log setup (and, live, the log itself) is the only thing top writes
    tmp = tempfile.mkdtemp(prefix="cmt-top-") if live or args.log_file else ""
    log_file = args.log_file or (os.path.join(tmp, "agent.log") if live else None)
    try:
        extra = [write_log_config(tmp, log_file)] if log_file else []
        return _run(args, [*config_files, *extra], overrides, live)
    except KeyboardInterrupt:
        return 130
    finally:
        if log_file and not args.log_file:
            print_log_problems(log_file, sys.stderr)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def _run(args: argparse.Namespace, config_files: list[str],
         overrides: pollrun.Overrides, live: bool) -> int:
    with pollrun.polling_agent(config_files, overrides=overrides) as agent:
        if args.once:
            last = watch(agent, interval=args.interval, cycles=2, sort=args.sort,
                         mode="quiet")
            assert last is not None
            if args.json:
                print(json.dumps(view_json(last), indent=2, sort_keys=True))
            else:
                from rich.console import Console

                Console().print(render(last))
            return 0
        watch(agent, interval=args.interval, cycles=args.cycles, sort=args.sort,
              mode="views" if args.json else ("live" if live else "print"))
    return 0
