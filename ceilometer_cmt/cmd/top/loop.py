"""The ``top`` loop: real polling cycles on one agent, each shown as it comes.

:class:`Poller` runs one cycle through ceilometer's polling manager
(:mod:`ceilometer_cmt.cmd.poll`) and builds its view, remembering instance
names; :func:`watch` polls, shows and sleeps, for ``ceilometer-cmt top`` and
``ceilometer-cmt demo`` alike.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TextIO

from ceilometer_cmt.cmd import poll as pollrun
from ceilometer_cmt.cmd.top.render import output, render
from ceilometer_cmt.cmd.top.view import INSTANCE_METERS, HostView, build_view, sort_rows, view_json


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
          footer: str | Callable[[], str] | None = None,
          on_cycle: Callable[[HostView], None] | None = None
          ) -> HostView | None:
    """Poll ``cycles`` times (None: until interrupted), ``interval`` s apart.

    ``mode``: ``live`` (a refreshing rich view), ``print`` (one table per
    cycle, for a pipe), ``jsonl`` (every sample as one JSON line with its
    cycle number), ``views`` (each cycle's :func:`view_json` as one line),
    ``quiet``. ``footer`` may be a callable, asked at each render (the demo
    shows the guard's last actions there). Returns the last view.
    """
    out = out or sys.stdout
    poller = Poller(agent)
    last: HostView | None = None
    with output(mode, out) as (show, width):
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
                show(render(last, title=title, width=width(),
                            footer=footer() if callable(footer) else footer))
            if on_cycle is not None:
                on_cycle(last)
    return last
