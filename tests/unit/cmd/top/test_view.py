"""``ceilometer_cmt.cmd.top.view``: the pure half of ``top``, on hand-made sample dicts.

tests/unit/cmd/top/test_command.py builds views from real polling cycles; these cases are the
ones a real cycle on the fixture host does not reach (no sample of a meter,
names from discovery only, timestamps, more than two domains, uuids sharing a
head) and the module's promise to stay pure.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from ceilometer_cmt.cmd.top import view as v
from ceilometer_cmt.readings import ALL_DOMAINS

MiB = 1024 * 1024
U1 = "11111111-aaaa-4000-8000-000000000001"
U2 = "22222222-aaaa-4000-8000-000000000002"
U3 = "33333333-aaaa-4000-8000-000000000003"


def sample(meter: str, resource: str, volume: Any, timestamp: str | None = None,
           **metadata: Any) -> dict[str, Any]:
    return {"counter_name": meter, "resource_id": resource, "counter_volume": volume,
            "timestamp": timestamp, "resource_metadata": metadata}


def host_samples(unmonitored: dict[str, str] | None = None) -> list[dict[str, Any]]:
    return [
        sample("cache.size", "compute-1", 64 * MiB, "2024-01-01T00:00:01",
               cmt_backend="resctrl",
               cache_domains=[{"id": 0, "size": 32 * MiB}, {"id": 1, "size": 32 * MiB}]),
        sample("cache.monitors.total", "compute-1", 176),
        sample("cache.monitors.used", "compute-1", 2),
        sample("cache.instances.unmonitored", "compute-1", len(unmonitored or {}),
               unmonitored=unmonitored or {}),
    ]


def test_build_view_from_samples() -> None:
    samples = [
        *host_samples({U3: "no RMID left"}),
        sample("cache.occupancy", U1, 4 * MiB, "2024-01-01T00:00:03", display_name="web",
               name="instance-00000001", cache_domains={"0": 4 * MiB, "1": 0}),
        sample("cache.occupancy.percent", U1, 12.5),
        sample("memory.bandwidth.total", U1, 1000),
        sample("memory.bandwidth.total.bytes", U1, 5000.0),
        # no cache.occupancy for U2: the older meter name fills the same field
        sample("cpu_l3_cache", U2, 8 * MiB, "2024-01-01T00:00:02", name="instance-00000002"),
        sample("an.other.meter", U1, 1),  # not top's: ignored
    ]
    view = v.build_view(samples, names={U2: "db", U3: "batch"})
    assert (view.host, view.backend, view.cache_size) == ("compute-1", "resctrl", 64 * MiB)
    assert dict(view.domain_sizes) == {0: 32 * MiB, 1: 32 * MiB}
    assert (view.monitors_total, view.monitors_used, view.unmonitored) == (176, 2, 1)
    assert view.timestamp == "2024-01-01T00:00:03" and view.cycle is None
    # sorted by occupancy percent; rows without one last, by uuid
    assert [r.uuid for r in view.rows] == [U1, U2, U3]
    r1, r2, r3 = view.rows
    assert (r1.name, r1.domain_name, r1.status) == ("web", "instance-00000001", "monitored")
    assert r1.occupancy == 4 * MiB and dict(r1.domains) == {0: 4 * MiB, 1: 0}
    assert r1.mbm_total_rate == 1000.0 and r1.mbm_total_bytes == 5000
    assert isinstance(r1.mbm_total_bytes, int) and r1.mbm_local_rate is None
    assert (r2.name, r2.occupancy, r2.occupancy_percent) == ("db", 8 * MiB, None)
    assert (r3.name, r3.monitored, r3.reason) == ("batch", False, "no RMID left")
    assert r3.status == "not monitored: no RMID left"


def test_build_view_without_samples() -> None:
    view = v.build_view([])
    assert view.rows == () and view.host is None and view.backend is None
    assert (view.cache_size, view.monitors_total, view.timestamp) == (None, None, None)
    assert v.view_json(view)["instances"] == []


def test_status_of_a_row() -> None:
    assert v.InstanceRow(U1).status == "monitored, no data"
    assert v.InstanceRow(U1, mbm_local_bytes=0).status == "monitored"
    assert v.InstanceRow(U1, monitored=False).status == "not monitored"
    # samples and a reason: an MBM event without a counter (mbm_event mode)
    assert v.InstanceRow(U1, occupancy=5, reason="no MBM counter: mbm_local_bytes: x").status \
        == "monitored in part: no MBM counter: mbm_local_bytes: x"


def test_an_instance_with_samples_and_a_reason_is_monitored_in_part() -> None:
    samples = [*host_samples({U1: "no MBM counter: mbm_local_bytes: no free MBM counter"}),
               sample("cache.occupancy", U1, 4 * MiB)]
    view = v.build_view(samples)
    [row] = view.rows
    assert (row.monitored, row.occupancy) == (True, 4 * MiB)
    assert row.status == "monitored in part: no MBM counter: mbm_local_bytes: no free MBM counter"


def test_domain_percent_host_wide_is_of_the_whole_cache() -> None:
    view = v.build_view(host_samples())
    assert view.domain_percent(1, 8 * MiB) == 25.0
    assert view.domain_percent(ALL_DOMAINS, 8 * MiB) == 12.5
    assert view.domain_percent(7, 8 * MiB) is None  # unknown domain


def test_sort_rows_missing_values_last_whatever_the_order() -> None:
    rows = [v.InstanceRow(U3, name="a", occupancy=None), v.InstanceRow(U2, name="b", occupancy=1),
            v.InstanceRow(U1, name=None, occupancy=5)]
    assert [r.uuid for r in v.sort_rows(rows, "occupancy")] == [U1, U2, U3]
    assert [r.uuid for r in v.sort_rows(rows, "name")] == [U1, U3, U2]  # no name sorts as ""
    assert [r.uuid for r in v.sort_rows(rows, "uuid")] == [U1, U2, U3]
    assert [r.uuid for r in v.sort_rows(rows, "mbm-total")] == [U1, U2, U3]  # none: by uuid
    with pytest.raises(KeyError):
        v.sort_rows(rows, "nonsense")


@pytest.mark.parametrize(("n", "suffix", "text"), [
    (None, "", "-"), (0, "", "0 B"), (1023, "", "1023 B"), (1024, "", "1.0 KiB"),
    (1536 * MiB, "/s", "1.5 GiB/s"), (5 * 1024 ** 5, "", "5120.0 TiB"),
])
def test_human_bytes(n: float | None, suffix: str, text: str) -> None:
    assert v.human_bytes(n, suffix) == text


def test_pct() -> None:
    assert (v.pct(None), v.pct(0.0), v.pct(33.649)) == ("-", "0.0%", "33.6%")


def test_domain_breakdown_counts_empty_domains_past_two() -> None:
    sizes = [{"id": i, "size": 32 * MiB} for i in range(4)]
    view = v.build_view([sample("cache.size", "h", 128 * MiB, cache_domains=sizes)])
    two = v.InstanceRow(U1, domains={0: 8 * MiB, 1: 0})
    assert v.domain_breakdown(view, two) == "L3#0 8.0 MiB 25.0%\nL3#1 0 B 0.0%"
    four = v.InstanceRow(U1, domains={3: 16 * MiB, 0: 8 * MiB, 1: 0, 2: 0})
    assert v.domain_breakdown(view, four) == \
        "L3#0 8.0 MiB 25.0%\nL3#3 16.0 MiB 50.0%\n2 more at 0 B"
    assert v.domain_breakdown(view, v.InstanceRow(U1)) == "-"


def test_short_uuids() -> None:
    rows = [v.InstanceRow(U1), v.InstanceRow(U2)]
    assert v.short_uuids(rows) == {U1: "11111111", U2: "22222222"}
    a, b = "00000000-0000-0000-0000-00000000000a", "00000000-0000-0000-0000-00000000000b"
    # the heads are the same: the tails, marked as tails, tell them apart
    assert v.short_uuids([v.InstanceRow(a), v.InstanceRow(b)]) == {
        a: "\u20260000000a", b: "\u20260000000b"}


def test_view_json_document() -> None:
    samples = [*host_samples(), sample("cache.occupancy", U1, 8 * MiB, cmt_backend="resctrl",
                                       cache_domains={"1": 8 * MiB})]
    doc = v.view_json(v.build_view(samples))
    assert doc["cache"] == {"size": 64 * MiB, "domains": [{"id": 0, "size": 32 * MiB},
                                                          {"id": 1, "size": 32 * MiB}]}
    assert doc["monitors"] == {"total": 176, "used": 2} and doc["unmonitored"] == 0
    [entry] = doc["instances"]
    assert entry["domains"] == [{"id": 1, "bytes": 8 * MiB, "percent": 25.0}]
    assert entry["occupancy_bytes"] == 8 * MiB and entry["status"] == "monitored"
    assert entry["mbm_total_bytes_per_second"] is None


def test_view_is_pure() -> None:
    """No terminal, no rich, no OpenStack: only the standard library and the meter table."""
    path = Path(v.__file__)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.add(node.module or "")
    ours = {m for m in found if m.startswith("ceilometer_cmt")}
    assert ours == {"ceilometer_cmt", "ceilometer_cmt.readings"}
    assert not {m.partition(".")[0] for m in found} & {
        "rich", "ceilometer", "oslo_config", "sys", "os", "curses"}


def test_aet_telemetry_fills_rows_json_and_columns() -> None:
    import io

    from rich.console import Console

    from ceilometer_cmt.cmd.top.render import render

    samples = [
        *host_samples(),
        sample("cache.occupancy", U1, 4 * MiB, display_name="web"),
        sample("energy.core", U1, 180.0), sample("power.core", U1, 3.0),
        sample("cpu.ipc", U1, 1.6), sample("cache.llc.miss.stall.ratio", U1, 0.2),
        sample("cache.occupancy", U2, 8 * MiB, display_name="db"),
        sample("power.core", U2, 0.75),
    ]
    view = v.build_view(samples)
    r1 = next(r for r in view.rows if r.uuid == U1)
    assert (r1.energy_core, r1.power_core, r1.cpu_ipc, r1.llc_miss_stall_ratio) == (
        180.0, 3.0, 1.6, 0.2)
    assert v.has_telemetry(view)
    assert [r.uuid for r in v.sort_rows(view.rows, "power")] == [U1, U2]
    doc = v.view_json(view)["instances"]
    assert {d["uuid"]: d["power_core_watts"] for d in doc} == {U1: 3.0, U2: 0.75}
    out = io.StringIO()
    Console(file=out, width=200).print(render(view))
    text = out.getvalue()
    assert "power" in text and "3.0 W" in text and "1.60" in text and "20.0%" in text
    # a host without AET shows no such column
    plain = v.build_view([*host_samples(), sample("cache.occupancy", U1, 4 * MiB)])
    assert not v.has_telemetry(plain)
    out = io.StringIO()
    Console(file=out, width=200).print(render(plain))
    assert "IPC" not in out.getvalue()


def test_capped_instances_stand_out() -> None:
    import io

    from rich.console import Console

    from ceilometer_cmt.cmd.top.render import render

    samples = [
        *host_samples(), sample("cache.guard.capped", "compute-1", 1),
        sample("cache.occupancy", U1, 4 * MiB, display_name="noisy"),
        sample("cache.allocation.percent", U1, 25.0, allocation_domains={"0": 25.0}),
        sample("cache.occupancy", U2, 8 * MiB, display_name="quiet"),
        sample("cache.allocation.percent", U2, 100.0),
        sample("cache.occupancy", U3, 1 * MiB, display_name="no-cat"),
    ]
    view = v.build_view(samples)
    rows = {r.uuid: r for r in view.rows}
    assert view.capped == 1
    assert [(rows[u].allocation_percent, rows[u].capped) for u in (U1, U2, U3)] == [
        (25.0, True), (100.0, False), (None, False)]
    assert v.has_allocation(view)
    assert [r.uuid for r in v.sort_rows(view.rows, "allocation")] == [U1, U2, U3]
    doc = v.view_json(view)
    assert doc["capped"] == 1
    assert {d["uuid"]: (d["allocation_percent"], d["capped"]) for d in doc["instances"]} == {
        U1: (25.0, True), U2: (100.0, False), U3: (None, False)}
    out = io.StringIO()
    Console(file=out, width=200).print(render(view))
    text = out.getvalue()
    assert "L3 ways" in text and "25.0% capped" in text and "capped 1" in text
    assert "100.0% capped" not in text
    out = io.StringIO()
    Console(file=out, width=100).print(render(view, width=100))  # narrow: in the status
    assert "L3 ways" not in out.getvalue() and "capped 25.0%" in out.getvalue()
    # a host without CAT: no such column, no capped count
    plain = v.build_view([*host_samples(), sample("cache.occupancy", U1, 4 * MiB)])
    assert not v.has_allocation(plain) and plain.capped is None
    out = io.StringIO()
    Console(file=out, width=200).print(render(plain))
    assert "L3 ways" not in out.getvalue() and "capped" not in out.getvalue()
