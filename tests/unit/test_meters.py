"""ceilometer_cmt/meters.py is THE table of meters: what is not generated from it
matches it (setup.cfg's entry points, the polling.yaml files), what is
generated behaves as the table says, and no other module spells a meter name.
"""

from __future__ import annotations

import ast
import configparser
import dataclasses
import importlib
from collections.abc import Collection
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from ceilometer import sample as ceilometer_sample
from ceilometer.polling import plugin_base
from ceilometer.polling.manager import PollingSource

from ceilometer_cmt import meters, readings
from ceilometer_cmt.cmd import gnocchi_resources, poll, top
from ceilometer_cmt.monitor import CycleResult, InstanceMeters
from ceilometer_cmt.pollsters import host as host_pollsters
from ceilometer_cmt.pollsters import instance as instance_pollsters
from ceilometer_cmt.pollsters import runtime
from ceilometer_cmt.readings import CacheDomain, HostCache
from tests.support.paths import REPO

PACKAGE = REPO / "ceilometer_cmt"
GROUP = "ceilometer.poll.compute"
BASES = {meters.INSTANCE: instance_pollsters._InstancePollster,
         meters.HOST: host_pollsters._HostPollster}
READINGS: dict[str, type] = {"InstanceMeters": InstanceMeters, "HostCache": HostCache,
                             "CycleResult": CycleResult}


# ------------------------------------------------------------- the table

def test_names_and_classes_are_unique() -> None:
    assert len({m.name for m in meters.TABLE}) == len(meters.TABLE)
    assert len({m.pollster for m in meters.TABLE}) == len(meters.TABLE)
    assert meters.names() == meters.names(meters.INSTANCE) + meters.names(meters.HOST)
    # every module-level Meter is in the table, and the other way round
    constants = [v for v in vars(meters).values() if isinstance(v, meters.Meter)]
    assert sorted(m.name for m in constants) == sorted(meters.names())


def test_types_are_ceilometers() -> None:
    assert meters.GAUGE == ceilometer_sample.TYPE_GAUGE
    assert meters.CUMULATIVE == ceilometer_sample.TYPE_CUMULATIVE
    for m in meters.TABLE:
        assert m.type in ceilometer_sample.TYPES, m.name


def test_every_source_is_a_field_of_its_reading() -> None:
    for m in meters.TABLE:
        reading, _, field = m.source.partition(".")
        if m.per == meters.INSTANCE:
            assert reading == "InstanceMeters", m.name
            assert field in {f.name for f in dataclasses.fields(InstanceMeters)}, m.name
        else:
            assert reading in ("HostCache", "CycleResult"), m.name
        assert hasattr(READINGS[reading], field) or field in {
            f.name for f in dataclasses.fields(READINGS[reading])}, m.name
    # how each host source is read: exactly the sources the table names
    assert set(host_pollsters.MEASURE) == {m.source for m in meters.of(meters.HOST)}


def test_archive_policies_and_resource_types() -> None:
    ours = {p["name"] for p in gnocchi_resources.OUR_ARCHIVE_POLICIES}
    for m in meters.TABLE:
        assert m.resource_type in gnocchi_resources.RESOURCE_ATTRIBUTES, m.name
        if m.archive_policy == meters.RATE_POLICY:  # rate:mean is for counters
            assert m.type == meters.CUMULATIVE, m.name
        else:
            assert m.archive_policy is None or m.archive_policy in ours, m.name


# ------------------------------------------------ setup.cfg's entry points

def entry_points(setup_cfg: str) -> list[tuple[str, str]]:
    """(name, target) of each ``ceilometer.poll.compute`` line, duplicates kept."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string(setup_cfg)
    lines = parser["options.entry_points"].get(GROUP, "").strip().splitlines()
    out = []
    for line in lines:
        name, sep, target = line.partition("=")
        assert sep, f"not an entry point: {line!r}"
        out.append((name.strip(), target.strip()))
    return out


def entry_point_problems(setup_cfg: str) -> list[str]:
    """What is wrong with setup.cfg's pollster entry points, compared with the table."""
    problems = []
    found = entry_points(setup_cfg)
    names = [n for n, _ in found]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"{name}: more than one entry point")
    by_name = dict(found)
    for m in meters.TABLE:
        target = by_name.get(m.name)
        if target is None:
            problems.append(f"{m.name}: no entry point")
            continue
        module_name, _, class_name = target.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as e:
            problems.append(f"{m.name}: {target} does not exist ({e})")
            continue
        if not (isinstance(cls, type) and issubclass(cls, BASES[m.per])):
            problems.append(f"{m.name}: {target} is not a {m.per} pollster")
            continue
        got = (cls.meter, cls.sample_type, cls.unit)
        if got != (m.name, m.type, m.unit):
            problems.append(f"{m.name}: {target} has meter, type, unit {got}")
        if target != f"{m.module}:{m.pollster}":
            problems.append(f"{m.name}: {target}, the table says {m.module}:{m.pollster}")
    for name in sorted(set(names) - set(meters.names())):
        problems.append(f"{name}: an entry point for no meter of the table")
    if not problems and names != list(meters.names()):
        problems.append(f"entry points not in the table's order: {names}")
    return problems


def test_setup_cfg_names_exactly_the_tables_pollsters() -> None:
    assert entry_point_problems((REPO / "setup.cfg").read_text()) == []


def test_the_entry_point_check_can_fail() -> None:
    text = (REPO / "setup.cfg").read_text()
    size = meters.CACHE_SIZE.entry_point
    assert size in text
    assert entry_point_problems(text.replace(f"    {size}\n", "")) == [
        "cache.size: no entry point"]
    assert entry_point_problems(text.replace(size, size + f"\n    {size}")) == [
        "cache.size: more than one entry point"]
    wrong = size.replace("CacheSizePollster", "CacheMonitorsUsedPollster")
    assert entry_point_problems(text.replace(size, wrong)) == [
        "cache.size: ceilometer_cmt.pollsters.host:CacheMonitorsUsedPollster has meter, "
        "type, unit ('cache.monitors.used', 'gauge', 'monitor')",
        "cache.size: ceilometer_cmt.pollsters.host:CacheMonitorsUsedPollster, "
        "the table says ceilometer_cmt.pollsters.host:CacheSizePollster"]
    missing = size.replace("CacheSizePollster", "CacheSizePoller")
    assert entry_point_problems(text.replace(size, missing))[0].startswith(
        "cache.size: ceilometer_cmt.pollsters.host:CacheSizePoller does not exist")
    extra = "    cache.colour = ceilometer_cmt.pollsters.host:CacheSizePollster\n"
    assert entry_point_problems(text.replace(f"    {size}\n", f"    {size}\n{extra}")) == [
        "cache.colour: an entry point for no meter of the table"]


# ------------------------------------------------ the generated pollsters

def pollster_classes(module: Any, base: type) -> dict[str, type]:
    return {name: cls for name, cls in vars(module).items()
            if isinstance(cls, type) and issubclass(cls, base) and cls is not base}


@pytest.mark.parametrize("per", [meters.INSTANCE, meters.HOST])
def test_each_pollster_module_holds_the_tables_classes(per: meters.Per) -> None:
    module = instance_pollsters if per == meters.INSTANCE else host_pollsters
    classes = pollster_classes(module, BASES[per])
    assert sorted(classes) == sorted(m.pollster for m in meters.of(per))
    assert issubclass(BASES[per], plugin_base.PollsterBase)
    for m in meters.of(per):
        cls = classes[m.pollster]
        assert (cls.__module__, cls.__qualname__) == (m.module, m.pollster)
        assert (cls.meter, cls.sample_type, cls.unit) == (m.name, m.type, m.unit)
        discovery = BASES[per].default_discovery.fget(None)  # type: ignore[attr-defined]
        assert discovery == {"instance": "local_instances", "host": "local_node"}[per]


def test_instance_pollsters_read_their_field() -> None:
    fields = [f.name for f in dataclasses.fields(InstanceMeters) if f.name != "occupancy_domains"]
    reading = InstanceMeters(**{f: 1000 + i for i, f in enumerate(fields)})
    classes = pollster_classes(instance_pollsters, instance_pollsters._InstancePollster)
    for m in meters.of(meters.INSTANCE):
        assert classes[m.pollster].value(reading) == 1000 + fields.index(m.field), m.name
    assert classes["CPUL3CachePollster"].value(reading) == reading.occupancy


def host_pollster(cls: type, monitor: Any) -> Any:
    pollster = cls.__new__(cls)  # no agent: measure() reads rt and the polling cache
    pollster.rt = SimpleNamespace(monitor=monitor)
    return pollster


def test_host_pollsters_measure_their_field_with_its_metadata() -> None:
    hc = HostCache(domains=(CacheDomain(id=0, level=3, size=32, cpus="0-3"),
                            CacheDomain(id=1, level=3, size=16, cpus="4-7")),
                   monitors_total=128, source="resctrl")
    result = CycleResult(backend="resctrl", timestamp=0.0, host_cache=hc,
                         unmonitored={"u2": "no free RMID", "u1": "gone"}, monitors_used=7,
                         mbm_counters={0: 32, 1: 32}, mbm_counters_available={1: 3, 0: 0},
                         removed_by_others=4, capped=2)
    monitor = SimpleNamespace(host_cache=hc, backend=SimpleNamespace(name="resctrl"))
    cache = {runtime.CACHE_KEY: result}
    got = {}
    for m in meters.of(meters.HOST):
        cls = getattr(host_pollsters, m.pollster)
        assert cls.needs_backend == m.needs_backend
        got[m.name] = host_pollster(cls, monitor).measure(None, cache)
    assert got == {
        "cache.size": (48, {"cache_domains": [
            {"id": 0, "size": 32, "level": 3, "cpus": "0-3"},
            {"id": 1, "size": 16, "level": 3, "cpus": "4-7"}], "source": "resctrl"}),
        "cache.monitors.total": (128, {"cmt_backend": "resctrl"}),
        "cache.monitors.used": (7, {"cmt_backend": "resctrl"}),
        "cache.instances.unmonitored": (2, {"cmt_backend": "resctrl", "unmonitored": {
            "u1": "gone", "u2": "no free RMID"}}),
        "cache.monitors.removed_by_others": (4, {"cmt_backend": "resctrl"}),
        "cache.guard.capped": (2, {"cmt_backend": "resctrl"}),
        "memory.bandwidth.counters.total": (64, {"cmt_backend": "resctrl",
                                                 "counter_domains": {"0": 32, "1": 32}}),
        "memory.bandwidth.counters.available": (3, {"cmt_backend": "resctrl",
                                                    "counter_domains": {"0": 0, "1": 3}}),
    }
    assert list(got["cache.instances.unmonitored"][1]["unmonitored"]) == ["u1", "u2"]
    assert list(got["memory.bandwidth.counters.available"][1]["counter_domains"]) == ["0", "1"]


def test_host_pollsters_partly_monitored_and_not_in_mbm_event_mode() -> None:
    """An instance with occupancy but an MBM event without a counter: its
    reason in the metadata, not counted; no counter samples outside
    mbm_event mode (None, never 0)."""
    from ceilometer_cmt.monitor import InstanceMeters

    hc = HostCache(domains=(), monitors_total=None, source="resctrl")
    result = CycleResult(backend="resctrl", timestamp=0.0, host_cache=hc,
                         instances={"u1": InstanceMeters(occupancy=5)},
                         unmonitored={"u1": "no MBM counter: mbm_total_bytes: ...",
                                      "u2": "gone"})
    monitor = SimpleNamespace(host_cache=hc, backend=SimpleNamespace(name="resctrl"))
    cache = {runtime.CACHE_KEY: result}

    def measure(m: meters.Meter) -> Any:
        return host_pollster(getattr(host_pollsters, m.pollster), monitor).measure(None, cache)

    assert measure(meters.CACHE_INSTANCES_UNMONITORED) == (1, {
        "cmt_backend": "resctrl", "unmonitored": {
            "u1": "no MBM counter: mbm_total_bytes: ...", "u2": "gone"}})
    assert measure(meters.MEMORY_BANDWIDTH_COUNTERS_TOTAL)[0] is None
    assert measure(meters.MEMORY_BANDWIDTH_COUNTERS_AVAILABLE)[0] is None
    assert measure(meters.CACHE_MONITORS_REMOVED_BY_OTHERS)[0] is None
    assert measure(meters.CACHE_GUARD_CAPPED)[0] is None  # not resctrl: cannot tell


# ------------------------------------------------------------- the others

def test_gnocchi_resources_come_from_the_table() -> None:
    by_type = {r.resource_type: r for r in gnocchi_resources.OUR_RESOURCES}
    assert gnocchi_resources.our_meter_names() == list(meters.names())
    for m in meters.TABLE:
        extra = by_type[m.resource_type].metrics[m.name]
        assert extra == ({"archive_policy_name": m.archive_policy} if m.archive_policy else {})


def test_top_shows_the_tables_meters() -> None:
    assert set(top.INSTANCE_METERS) == set(meters.names(meters.INSTANCE))
    assert set(top.HOST_METERS) == set(meters.names(meters.HOST))
    row_fields = {f.name for f in dataclasses.fields(top.InstanceRow)}
    for m in meters.of(meters.INSTANCE):
        assert m.field in row_fields, m.name
    volumes = {m.name: 10 * i + 0.5 for i, m in enumerate(meters.of(meters.INSTANCE))}
    values = top.row_values(volumes.get)
    assert values["occupancy"] == 0 and type(values["occupancy"]) is int
    assert values["occupancy_percent"] == 10.5
    # the old name stands in when cache.occupancy gave no sample
    volumes[meters.CACHE_OCCUPANCY.name] = None  # type: ignore[assignment]
    assert top.row_values(volumes.get)["occupancy"] == 20


def shipped_sources(path: Path) -> dict[str, list[str]]:
    data = yaml.safe_load(path.read_text())
    parsed = [PollingSource(s) for s in data["sources"]]  # ceilometer's own parser
    assert len(parsed) == len(data["sources"])
    return {s["name"]: list(s["meters"]) for s in data["sources"]}


def test_etc_polling_yaml_is_generated_from_the_table() -> None:
    assert (REPO / "etc" / "polling.yaml").read_text() == meters.polling_yaml(), (
        "etc/polling.yaml is stale: run python -m ceilometer_cmt.meters > etc/polling.yaml")


def test_etc_polling_yaml_lists_the_table_per_kind() -> None:
    sources = shipped_sources(REPO / "etc" / "polling.yaml")
    assert sources == {s.name: list(meters.names(s.per)) for s in meters.POLLING_SOURCES}
    assert [s.per for s in meters.POLLING_SOURCES] == [meters.INSTANCE, meters.HOST]
    # the generator follows the table: a meter added there shows up in its source
    extra = dataclasses.replace(meters.CACHE_SIZE, name="cache.extra", summary="x")
    data = yaml.safe_load(meters.polling_yaml(table=(*meters.TABLE, extra)))
    assert {s["name"]: s["meters"] for s in data["sources"]} == {
        "cmt_cache": list(meters.names(meters.INSTANCE)),
        "cmt_host": [*meters.names(meters.HOST), "cache.extra"]}


def test_builtin_polling_yaml_lists_every_meter_once(tmp_path: Path) -> None:
    # what `ceilometer-cmt poll`, top and the demo poll by default: one source
    sources = shipped_sources(Path(poll.write_default_polling_file(str(tmp_path))))
    assert sources == {"cmt_all": list(meters.names())}


# ----------------------------------------------- no meter name elsewhere

def meter_literals(path: Path, root: Path = REPO,
                   names: Collection[str] | None = None) -> list[str]:
    """Meter names (or ``names``) spelled as string constants in ``path``
    (f-string parts included)."""
    wanted = set(meters.names() if names is None else names)
    return sorted(f"{path.relative_to(root)}:{node.lineno}: {node.value!r}"
                  for node in ast.walk(ast.parse(path.read_text(), str(path)))
                  if isinstance(node, ast.Constant) and node.value in wanted)


def test_no_other_module_spells_a_meter_name() -> None:
    found = [hit for path in sorted(PACKAGE.rglob("*.py")) if path.name != "meters.py"
             for hit in meter_literals(path)]
    assert found == [], "use ceilometer_cmt.meters instead:\n" + "\n".join(found)


def test_the_literal_check_can_fail(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text('"""cache.size"""\nX = "cache.size"\nY = f"{X}: cpu_l3_cache"\n'
                     'Z = ["cache.sizes", f"{X}" "cpu_l3_cache"]\n')
    assert meter_literals(probe, tmp_path) == ["probe.py:1: 'cache.size'",
                                               "probe.py:2: 'cache.size'",
                                               "probe.py:4: 'cpu_l3_cache'"]


# ------------------------------------- no resctrl L3 event name elsewhere

#: Where the plugin may spell a resctrl L3 event name besides readings.py:
#: modules that play the kernel spell their own (an oracle that imported the
#: plugin's names would share its typos), and two other namespaces share words.
EVENT_NAME_PLACES: dict[str, tuple[frozenset[str], str]] = {
    "ceilometer_cmt/testing/mbm_assign_tree.py": (
        frozenset(readings.L3_EVENTS), "a fake kernel tree, like the simulator"),
    "ceilometer_cmt/backends/perf/pmu.py": (
        frozenset({readings.LLC_OCCUPANCY}),
        "intel_cqm's perf event name (its MBM events are total_bytes, local_bytes)"),
    "ceilometer_cmt/cmd/top/view.py": (
        frozenset(readings.MBM_EVENTS), "keys of the top --json document"),
}


def event_literals(package: Path, root: Path = REPO,
                   allowed: dict[str, tuple[frozenset[str], str]] | None = None) -> list[str]:
    """The resctrl L3 event names spelled under ``package`` outside readings.py,
    the simulator and ``allowed``'s (path, names)."""
    allowed = EVENT_NAME_PLACES if allowed is None else allowed
    found = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel == "ceilometer_cmt/readings.py" or "simulator" in path.relative_to(package).parts:
            continue
        names = set(readings.L3_EVENTS) - allowed.get(rel, (frozenset(), ""))[0]
        found += meter_literals(path, root, names)
    return found


def test_no_other_module_spells_a_resctrl_event_name() -> None:
    found = event_literals(PACKAGE)
    assert found == [], "use ceilometer_cmt.readings instead:\n" + "\n".join(found)
    for rel, (names, _) in EVENT_NAME_PLACES.items():  # no stale exception
        assert meter_literals(REPO / rel, REPO, names), rel


def test_the_event_literal_check_can_fail(tmp_path: Path) -> None:
    package = tmp_path / "ceilometer_cmt"
    (package / "simulator").mkdir(parents=True)
    text = ('"""llc_occupancy"""\nX = "llc_occupancy"\nY = f"{X}: mbm_local_bytes"\n'
            'Z = ("mbm_total_bytes", f"{X}" "mbm_local_bytes")\n')
    for rel in ("readings.py", "simulator/model.py", "a.py", "b.py"):
        (package / rel).write_text(text)
    allowed = {"ceilometer_cmt/b.py": (frozenset({"llc_occupancy"}), "a reason")}
    assert event_literals(package, tmp_path, allowed) == [
        "ceilometer_cmt/a.py:1: 'llc_occupancy'",
        "ceilometer_cmt/a.py:2: 'llc_occupancy'",
        "ceilometer_cmt/a.py:4: 'mbm_local_bytes'",
        "ceilometer_cmt/a.py:4: 'mbm_total_bytes'",
        "ceilometer_cmt/b.py:4: 'mbm_local_bytes'",
        "ceilometer_cmt/b.py:4: 'mbm_total_bytes'"]


def test_main_prints_etc_polling_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    assert meters.main([]) == 0
    assert capsys.readouterr().out == (REPO / "etc" / "polling.yaml").read_text()
    assert meters.main(["--write"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "usage:" in err


# ------------------------------------------------- the events each meter needs

#: the reading field -> the backend events its value is computed from
FIELD_EVENTS = {
    "occupancy": {"llc_occupancy"}, "occupancy_percent": {"llc_occupancy"},
    "mbm_total_bytes": {"mbm_total_bytes"}, "mbm_total_rate": {"mbm_total_bytes"},
    "mbm_local_bytes": {"mbm_local_bytes"}, "mbm_local_rate": {"mbm_local_bytes"},
    "energy_core": {"core_energy"}, "power_core": {"core_energy"},
    "cpu_ipc": {"uops_retired", "unhalted_core_cycles"},
    "llc_miss_stall_ratio": {"stalls_llc_miss", "unhalted_core_cycles"},
}


def test_every_meter_names_the_events_it_needs() -> None:
    from ceilometer_cmt.backends.resctrl import fs
    from ceilometer_cmt.readings import TELEMETRY_EVENTS

    assert fs.EVENTS is readings.L3_EVENTS and fs.MBM_EVENTS is readings.MBM_EVENTS
    known = set(fs.EVENTS) | set(TELEMETRY_EVENTS)
    for m in meters.TABLE:
        assert m.events is not None, f"{m.name}: the row does not say which events it needs"
        assert set(m.events) <= known, m.name
        # the others (host meters, CAT allocation) read info files, schemata
        # and the cycle's bookkeeping only: no value file
        assert set(m.events) == FIELD_EVENTS.get(m.field, set()), m.name


def test_events_of_is_the_union() -> None:
    assert meters.events_of([]) == frozenset()
    assert meters.events_of([meters.CACHE_OCCUPANCY, meters.CPU_L3_CACHE]) == {"llc_occupancy"}
    assert meters.events_of([meters.CPU_IPC, meters.CACHE_LLC_MISS_STALL_RATIO,
                             meters.CACHE_SIZE]) == {
        "uops_retired", "unhalted_core_cycles", "stalls_llc_miss"}
    assert meters.events_of(meters.TABLE) == {
        "llc_occupancy", "mbm_total_bytes", "mbm_local_bytes", "core_energy",
        "uops_retired", "unhalted_core_cycles", "stalls_llc_miss"}


def readme_meter_rows() -> dict[str, tuple[str, str, str]]:
    """The README's meter tables: name -> (per, type, unit), per from the
    table's place (the first table is per instance, the second per host)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("\n## Meters\n"):]
    section = section[:section.index("\n## ", 1)]
    per_instance, _, per_host = section.partition("\nPer host")
    rows = {}
    for per, part in ((meters.INSTANCE, per_instance), (meters.HOST, per_host)):
        for line in part.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) >= 4 and cells[0].startswith("`") and cells[0].endswith("`"):
                rows[cells[0].strip("`")] = (per, cells[1], cells[2])
    return rows


def test_the_readme_describes_every_meter_as_the_table_has_it() -> None:
    rows = readme_meter_rows()
    assert rows == {m.name: (m.per, m.type, m.unit) for m in meters.TABLE}
