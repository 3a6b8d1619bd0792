"""The ``top`` view on a terminal, with ``rich``.

:func:`render` makes one :class:`~ceilometer_cmt.cmd.top.view.HostView` a
renderable (a header line and a table, fitted to the terminal's width);
:func:`output` is where each cycle's renderable goes: a refreshing live view
on a terminal, one table after another on a pipe, or nowhere. rich is
imported only when something is drawn (``--json`` and the demo's JSON lines
never load it).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from ceilometer_cmt.cmd.top.view import (
    HostView,
    domain_breakdown,
    has_allocation,
    has_telemetry,
    human_bytes,
    number,
    pct,
    short_uuids,
)


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
        f"  capped {view.capped}" if view.capped is not None else "",
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
    # hosts with CAT; a narrow terminal says "capped" in the status instead
    allocation = has_allocation(view) and not narrow
    if allocation:
        table.add_column("L3 ways", justify="right", no_wrap=True)
    telemetry = has_telemetry(view)  # Intel AET hosts
    if telemetry:
        table.add_column("power", justify="right", no_wrap=True)
        table.add_column("IPC", justify="right", no_wrap=True)
        table.add_column("LLC-miss stall" if not narrow else "stall", justify="right",
                         no_wrap=True)
    if not narrow:
        table.add_column("per domain", no_wrap=True)
    table.add_column("status", min_width=6, overflow="ellipsis", no_wrap=narrow)
    for r in view.rows:
        hot = r.occupancy_percent is not None and r.occupancy_percent >= alert_percent
        cells: list[Any] = [
            r.name or r.domain_name or "?", short[r.uuid] if short else r.uuid,
            human_bytes(r.occupancy),
            Text(pct(r.occupancy_percent), style="bold red" if hot else ""),
            human_bytes(r.mbm_total_rate, "/s"), human_bytes(r.mbm_local_rate, "/s")]
        if allocation:  # a capped instance stands out
            cells.append(Text(pct(r.allocation_percent) + (" capped" if r.capped else ""),
                              style="bold yellow" if r.capped else ""))
        if telemetry:
            cells += [number(r.power_core, ".1f", " W"), number(r.cpu_ipc),
                      pct(None if r.llc_miss_stall_ratio is None
                          else 100.0 * r.llc_miss_stall_ratio)]
        if not narrow:
            cells.append(domain_breakdown(view, r))
        status = r.status
        if narrow:
            status = {"monitored": "ok", "monitored, no data": "no data"}.get(
                status, status.replace("not monitored", "off"))
            if r.capped:
                status = f"capped {pct(r.allocation_percent)}"
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


@contextlib.contextmanager
def output(mode: str, out: TextIO
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
