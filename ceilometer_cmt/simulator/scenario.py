"""Workload scenarios for the resctrl simulator.

A scenario is a YAML (or JSON, a subset of YAML) mapping.  Every key is
optional; an empty file is an idle host::

    clock: wall              # "wall" (default) or "manual": time then moves only
                             # when the control command "advance" is sent
    rmids: 16                # override the topology's info/L3_MON/num_rmids
    closids: 8               # override info/L3/num_closids
    mbm_cntrs: 32            # override num_mbm_cntrs (ABMC counters per domain)
    cbm_len: 11              # override the L3 ways (info/L3/cbm_mask 7ff),
    min_cbm_bits: 2          # info/L3/min_cbm_bits (Haswell: 2)
    sparse_masks: false      # and info/L3/sparse_masks
    limbo_seconds: 1.0       # how long a freed RMID stays busy (mkdir -> EBUSY)

    background:              # load of the rest of the host (tasks no process
      occupancy: {"*": 2MiB} # entry matches), counted in the root group
      mbm_total: {"*": 50MiB}

    processes:
      - name: vm1            # a label, used in messages
        match:               # exactly one of:
          cmdline: "guest=instance-00000001"   # substring of /proc/PID/cmdline
                             # (NULs read as spaces); or
          # comm: qemu-kvm   # exact /proc/PID/comm; or
          # pid: 1234        # that process; or
          # cmdline_regex: "guest=instance-0+1(,|$| )"
        split: even          # "even" (default): the load is shared equally by the
                             # process's live threads, each counted in the group it
                             # is in; "main": all of it on the main thread
        interpolate: linear  # "linear" (default) or "step" between points
        repeat: false        # true: loop the timeline (period = last point's t)
        timeline:            # points; before the first / after the last point
          - t: 0             # the first / last values hold (t in seconds since
            occupancy:       # the simulator started)
              0: 8MiB        # LLC occupancy per monitoring domain
              1: "25%"       # (bytes, or percent of the domain)
            mbm_total: {0: 1GiB, 1: 100MiB}   # bytes per second per domain
            mbm_local: {0: 900MiB}
            cpu: {0: 2, 1: "50%"}   # busy CPUs per domain (or percent of its
                             # CPUs): drives the PERF_PKG telemetry (intel-aet);
                             # without it, one busy CPU per GiB/s of mbm_total
          - t: 60
            occupancy: {0: 20MiB}

    faults:                  # what reads show instead of a number, and events
      - at: 10               # from (s, default 0) ...
        until: 20            # ... to (s, default forever)
        group: "mon_groups/vm1*"   # fnmatch on the group's path relative to
                             # the mount ("" is the root group, "ctl/mon_groups/m")
        domain: 0            # monitoring domain id, or "*" (default)
        event: llc_occupancy # or mbm_total_bytes, mbm_local_bytes, "*" (default)
        value: Unavailable   # Unavailable | Error | Unassigned
      - {at: 30, action: reset_counters, group: "*"}   # MBM counters back to 0
      - {at: 40, action: set_rmids, value: 4}          # num_rmids becomes 4
      - {at: 50, action: set_limbo, value: 10}         # limbo_seconds becomes 10
      # writes to info/L3_MON files, as if another tool made them (the text
      # gets its newline; last_cmd_status shows the result):
      - {at: 60, action: assign_mode, value: default}  # mbm_assign_mode
      - {at: 70, action: event_filter, event: mbm_total_bytes,
         value: "local_reads,remote_reads"}          # event_configs/<event>/event_filter
      - {at: 80, action: bmec_config, event: mbm_local_bytes,
         value: "0=0x15;1=0x05"}                     # mbm_local_bytes_config

Fault events may also be PERF_PKG events (``core_energy``...), their
``domain`` then a package id.

Domain keys are monitoring-domain ids: the ``mon_L3_XX`` ids, or with SNC the
``mon_sub_L3_YY`` (node) ids; ``"*"`` sets every domain.  A missing domain is 0.
Sizes: a plain number is bytes; suffixes ``K``/``M``/``G``/``T`` with ``i``
are binary (``MiB`` = 2**20), without ``i`` decimal (``MB`` = 10**6); a
trailing ``B`` and ``/s`` are allowed.  Group occupancy is capped so that the
groups of one domain never hold more than the domain's size, and rounded down
to the topology's occupancy granularity, as hardware reports it.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ceilometer_cmt.simulator.timeline import Point, Timeline
from ceilometer_cmt.simulator.topology import MON_EVENTS, PERF_PKG_EVENTS, Topology

METRICS = ("occupancy", "mbm_total", "mbm_local", "cpu")
FAULT_VALUES = ("Unavailable", "Error", "Unassigned")
#: actions that write a file's text (``value``), with the event they need
TEXT_ACTIONS = {"assign_mode": False, "event_filter": True, "bmec_config": True}
ACTIONS = ("reset_counters", "set_rmids", "set_limbo", *TEXT_ACTIONS)
FAULT_EVENTS = MON_EVENTS + PERF_PKG_EVENTS

_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)\s*(?:([KMGT])(i?))?B?(?:/s)?\s*$", re.I)
_PCT_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)\s*%\s*$")
_POW = {"K": 1, "M": 2, "G": 3, "T": 4}


class ScenarioError(ValueError):
    """The scenario text is not valid; the message says where."""


def parse_quantity(value: Any, percent_of: int | None = None) -> float:
    """``"8MiB"`` -> 8388608.0; ``"25%"`` -> a quarter of ``percent_of``."""
    if isinstance(value, bool):
        raise ScenarioError(f"not a quantity: {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ScenarioError(f"negative quantity: {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ScenarioError(f"not a quantity: {value!r}")
    m = _PCT_RE.match(value)
    if m:
        if percent_of is None:
            raise ScenarioError(f"percent not allowed here: {value!r}")
        return float(m.group(1)) / 100.0 * percent_of
    m = _SIZE_RE.match(value)
    if not m:
        raise ScenarioError(f"not a quantity: {value!r}")
    number = float(m.group(1))
    if m.group(2):
        base = 1024 if m.group(3) else 1000
        number *= base ** _POW[m.group(2).upper()]
    return number


@dataclass(frozen=True)
class ProcessMatch:
    pid: int | None = None
    comm: str | None = None
    cmdline: str | None = None
    cmdline_regex: str | None = None

    def matches(self, pid: int, comm: str, cmdline: str) -> bool:
        if self.pid is not None:
            return pid == self.pid
        if self.comm is not None:
            return comm == self.comm
        if self.cmdline is not None:
            return self.cmdline in cmdline
        if self.cmdline_regex is not None:
            return re.search(self.cmdline_regex, cmdline) is not None
        return False


@dataclass(frozen=True)
class ProcessLoad:
    name: str
    match: ProcessMatch
    timeline: Timeline
    split: str = "even"


@dataclass(frozen=True)
class Fault:
    """A value shown instead of a number, for reads within [start, end)."""

    value: str
    group: str = "*"
    domain: int | None = None
    event: str | None = None
    start: float = 0.0
    end: float | None = None

    def applies(self, group_path: str, domain: int, event: str, t: float) -> bool:
        if t < self.start or (self.end is not None and t >= self.end):
            return False
        if self.domain is not None and self.domain != domain:
            return False
        if self.event is not None and self.event != event:
            return False
        return fnmatch.fnmatchcase(group_path, self.group)


@dataclass(frozen=True)
class Action:
    """A one-off event at time ``at``."""

    at: float
    action: str
    group: str = "*"
    value: float | None = None
    text: str = ""  # what a TEXT_ACTIONS action writes
    event: str = ""


@dataclass(frozen=True)
class Scenario:
    clock: str = "wall"
    rmids: int | None = None
    closids: int | None = None
    mbm_cntrs: int | None = None
    cbm_len: int | None = None
    min_cbm_bits: int | None = None
    sparse_masks: bool | None = None
    limbo_seconds: float = 1.0
    background: Timeline | None = None
    processes: tuple[ProcessLoad, ...] = ()
    faults: tuple[Fault, ...] = ()
    actions: tuple[Action, ...] = field(default_factory=tuple)

    def host(self, topology: Topology) -> Topology:
        """``topology`` with this scenario's overrides (RMIDs, CLOSIDs, ABMC
        counters where the host has them, the L3 ways and their rules)."""
        given: dict[str, Any] = {
            "num_rmids": self.rmids, "num_closids": self.closids, "cbm_len": self.cbm_len,
            "min_cbm_bits": self.min_cbm_bits, "sparse_masks": self.sparse_masks,
            "num_mbm_cntrs": self.mbm_cntrs if topology.num_mbm_cntrs else None}
        return replace(topology, **{k: v for k, v in given.items() if v is not None})


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ScenarioError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _domain_key(key: Any, topology: Topology, where: str, pkgs: bool = False) -> list[int]:
    ids = [d.id for d in topology.mon_domains]
    if pkgs:
        ids = sorted({*ids, *(p.id for p in topology.packages)})
    if key == "*":
        return ids
    try:
        dom = int(key)
    except (TypeError, ValueError):
        raise ScenarioError(f"{where}: bad domain {key!r}") from None
    if dom not in ids:
        raise ScenarioError(f"{where}: no monitoring domain {dom} in {topology.name} ({ids})")
    return [dom]


def _timeline(raw: Any, topology: Topology, where: str, *, single: bool = False) -> Timeline:
    sizes = {d.id: d.size for d in topology.mon_domains}
    ncpus = {d.id: len(d.cpus) for d in topology.mon_domains}
    if single:
        raw_points: list[Any] = [dict(_mapping(raw, where), t=0)]
        opts: Mapping[str, Any] = {}
    else:
        opts = _mapping(raw, where)
        raw_points = opts.get("timeline") or []
        if not isinstance(raw_points, list):
            raise ScenarioError(f"{where}.timeline: expected a list")
    points: list[Point] = []
    for i, rp in enumerate(raw_points):
        pw = f"{where}.timeline[{i}]"
        rp = _mapping(rp, pw)
        unknown = set(rp) - {"t", *METRICS}
        if unknown:
            raise ScenarioError(f"{pw}: unknown keys {sorted(unknown)}")
        t = float(parse_quantity(rp.get("t", 0)))
        values: dict[tuple[str, int], float] = {}
        for metric in METRICS:
            for key, q in _mapping(rp.get(metric), f"{pw}.{metric}").items():
                for dom in _domain_key(key, topology, f"{pw}.{metric}"):
                    pct_base = {"occupancy": sizes, "cpu": ncpus}.get(metric, {}).get(dom)
                    try:
                        values[(metric, dom)] = parse_quantity(q, pct_base)
                    except ScenarioError as e:
                        raise ScenarioError(f"{pw}.{metric}: {e}") from None
        points.append(Point(t, values))
    points.sort(key=lambda p: p.t)
    for a, b in zip(points, points[1:], strict=False):
        if a.t == b.t:
            raise ScenarioError(f"{where}: two timeline points at t={a.t}")
    interpolate = str(opts.get("interpolate", "linear"))
    if interpolate not in ("linear", "step"):
        raise ScenarioError(f"{where}.interpolate: 'linear' or 'step', not {interpolate!r}")
    return Timeline(tuple(points), interpolate, bool(opts.get("repeat", False)))


def _match(raw: Any, where: str) -> ProcessMatch:
    m = _mapping(raw, where)
    keys = set(m) & {"pid", "comm", "cmdline", "cmdline_regex"}
    if len(keys) != 1 or set(m) - keys:
        raise ScenarioError(f"{where}: give exactly one of pid, comm, cmdline, cmdline_regex")
    if "pid" in m:
        return ProcessMatch(pid=int(m["pid"]))
    if "cmdline_regex" in m:
        try:
            re.compile(str(m["cmdline_regex"]))
        except re.error as e:
            raise ScenarioError(f"{where}.cmdline_regex: {e}") from None
    if "comm" in m:
        return ProcessMatch(comm=str(m["comm"]))
    if "cmdline" in m:
        return ProcessMatch(cmdline=str(m["cmdline"]))
    return ProcessMatch(cmdline_regex=str(m["cmdline_regex"]))


def parse_fault(raw: Mapping[str, Any], topology: Topology, where: str = "fault") -> Fault | Action:
    """One ``faults:`` entry (also the control socket's ``fault`` payload)."""
    raw = _mapping(raw, where)
    start = float(parse_quantity(raw.get("at", 0)))
    group = str(raw.get("group", "*"))
    if "action" in raw:
        action = str(raw["action"])
        if action not in ACTIONS:
            raise ScenarioError(f"{where}.action: one of {ACTIONS}, not {action!r}")
        value = raw.get("value")
        if action != "reset_counters" and value is None:
            raise ScenarioError(f"{where}: {action} needs a value")
        if action in TEXT_ACTIONS:
            event = str(raw.get("event", ""))
            if TEXT_ACTIONS[action] and event not in ("mbm_total_bytes", "mbm_local_bytes"):
                raise ScenarioError(f"{where}: {action} needs an event (an MBM event)")
            return Action(start, action, group, text=str(value), event=event)
        return Action(start, action, group, None if value is None else float(value))
    value = str(raw.get("value", ""))
    if value not in FAULT_VALUES:
        raise ScenarioError(f"{where}.value: one of {FAULT_VALUES}, not {value!r}")
    domain_raw = raw.get("domain", "*")
    domain = None if domain_raw == "*" else _domain_key(domain_raw, topology, where, True)[0]
    event_raw = raw.get("event", "*")
    if event_raw != "*" and event_raw not in FAULT_EVENTS:
        raise ScenarioError(f"{where}.event: one of {FAULT_EVENTS} or '*', not {event_raw!r}")
    end = raw.get("until")
    return Fault(
        value, group, domain, None if event_raw == "*" else str(event_raw), start,
        None if end is None else float(parse_quantity(end)),
    )


def parse_scenario(data: Any, topology: Topology) -> Scenario:
    """A scenario from already-decoded YAML/JSON data."""
    top = _mapping(data, "scenario")
    known = {"clock", "rmids", "closids", "mbm_cntrs", "limbo_seconds", "background",
             "processes", "faults", "cbm_len", "min_cbm_bits", "sparse_masks"}
    unknown = set(top) - known
    if unknown:
        raise ScenarioError(f"scenario: unknown keys {sorted(unknown)}")
    clock = str(top.get("clock", "wall"))
    if clock not in ("wall", "manual"):
        raise ScenarioError(f"scenario.clock: 'wall' or 'manual', not {clock!r}")
    procs: list[ProcessLoad] = []
    raw_procs = top.get("processes") or []
    if not isinstance(raw_procs, list):
        raise ScenarioError("scenario.processes: expected a list")
    for i, rp in enumerate(raw_procs):
        where = f"processes[{i}]"
        rp = _mapping(rp, where)
        unknown = set(rp) - {"name", "match", "split", "interpolate", "repeat", "timeline"}
        if unknown:
            raise ScenarioError(f"{where}: unknown keys {sorted(unknown)}")
        split = str(rp.get("split", "even"))
        if split not in ("even", "main"):
            raise ScenarioError(f"{where}.split: 'even' or 'main', not {split!r}")
        procs.append(
            ProcessLoad(
                str(rp.get("name", f"process{i}")),
                _match(rp.get("match"), f"{where}.match"),
                _timeline(rp, topology, where),
                split,
            )
        )
    faults: list[Fault] = []
    actions: list[Action] = []
    raw_faults = top.get("faults") or []
    if not isinstance(raw_faults, list):
        raise ScenarioError("scenario.faults: expected a list")
    for i, rf in enumerate(raw_faults):
        item = parse_fault(rf, topology, f"faults[{i}]")
        (actions if isinstance(item, Action) else faults).append(item)  # type: ignore[arg-type]
    background = None
    if top.get("background") is not None:
        background = _timeline(top["background"], topology, "background", single=True)
    rmids = top.get("rmids")
    closids = top.get("closids")
    cbm_len = int(top.get("cbm_len", topology.cbm_len))
    min_cbm_bits = int(top.get("min_cbm_bits", topology.min_cbm_bits))
    if not 1 <= cbm_len <= 32 or not 0 <= min_cbm_bits <= cbm_len:
        raise ScenarioError("scenario: need 1 <= cbm_len <= 32 and 0 <= min_cbm_bits <= cbm_len")
    return Scenario(
        clock=clock,
        rmids=None if rmids is None else int(rmids),
        closids=None if closids is None else int(closids),
        mbm_cntrs=None if top.get("mbm_cntrs") is None else int(top["mbm_cntrs"]),
        cbm_len=None if "cbm_len" not in top else cbm_len,
        min_cbm_bits=None if "min_cbm_bits" not in top else min_cbm_bits,
        sparse_masks=None if "sparse_masks" not in top else bool(top["sparse_masks"]),
        limbo_seconds=float(top.get("limbo_seconds", 1.0)),
        background=background,
        processes=tuple(procs),
        faults=tuple(faults),
        actions=tuple(sorted(actions, key=lambda a: a.at)),
    )


def load_scenario(path: str | None, topology: Topology) -> Scenario:
    """Read a YAML or JSON scenario file; ``None`` gives the idle scenario."""
    if path is None:
        return Scenario()
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return loads_scenario(text, topology)


def loads_scenario(text: str, topology: Topology) -> Scenario:
    try:
        data = json.loads(text)
    except ValueError:
        import yaml  # PyYAML; JSON needs nothing else

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ScenarioError(f"scenario is neither JSON nor YAML: {e}") from None
    return parse_scenario(data, topology)
