"""``ceilometer-cmt top``: a live per-instance view of cache occupancy and bandwidth.

It runs real polling cycles through ceilometer's polling manager with the
agent's own config files (:mod:`ceilometer_cmt.cmd.poll`), so the view shows
exactly the samples ceilometer would publish, whatever backend runs.

Read it in this order; each module imports only those before it:

* :mod:`~ceilometer_cmt.cmd.top.view` (pure): one cycle's sample dicts ->
  :class:`HostView` (host cache, monitors, one :class:`InstanceRow` per
  running instance, monitored or with the reason why not); :func:`sort_rows`,
  :func:`view_json` and the text of each cell;
* :mod:`~ceilometer_cmt.cmd.top.render`: the view as a ``rich`` table, and where
  it is shown (a live terminal, a pipe);
* :mod:`~ceilometer_cmt.cmd.top.loop`: :func:`watch`, the loop (poll, render,
  sleep) shared with ``ceilometer-cmt demo``;
* :mod:`~ceilometer_cmt.cmd.top.command`: :func:`main`, the options and the
  agent's log kept off the view.

Like the agent, ``top`` creates monitor groups with the plugin's prefix on a
resctrl host (the same groups: they are adopted, not duplicated).

The names below are the package's interface (``cli``, ``demo`` and the tests
use them); the modules' other names are theirs. ``top.render`` is the
function, which hides the module of the same name: import from
``ceilometer_cmt.cmd.top.render`` to reach the module's other names.
"""

from __future__ import annotations

from ceilometer_cmt.cmd.top.command import (
    default_config_files,
    logging_conf,
    main,
    print_log_problems,
    write_log_config,
)
from ceilometer_cmt.cmd.top.loop import Poller, watch
from ceilometer_cmt.cmd.top.render import render
from ceilometer_cmt.cmd.top.view import (
    HOST_METERS,
    INSTANCE_METERS,
    SORT_KEYS,
    HostView,
    InstanceRow,
    build_view,
    domain_breakdown,
    human_bytes,
    row_values,
    short_uuids,
    sort_rows,
    view_json,
)

__all__ = [
    "HOST_METERS", "INSTANCE_METERS", "SORT_KEYS", "HostView", "InstanceRow", "Poller",
    "build_view", "default_config_files", "domain_breakdown", "human_bytes", "logging_conf",
    "main", "print_log_problems", "render", "row_values", "short_uuids", "sort_rows",
    "view_json", "watch", "write_log_config",
]
