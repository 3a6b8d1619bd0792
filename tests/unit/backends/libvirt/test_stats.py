"""Parsers of libvirt bulk-stats records and capabilities XML.

Records are built key by key in the order and with the names libvirt's
qemuDomainGetStatsCpuCache / qemuDomainGetStatsMemoryBandwidth /
qemuDomainGetStatsPerf emit them (virsh.rst "domstats"); the capabilities XML
follows virCapabilitiesFormatCaches.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ceilometer_cmt.backends.libvirt import stats as ls
from ceilometer_cmt.readings import ALL_DOMAINS

MiB = 1024**2


def cache_keys(monitors: list[tuple[str, str, list[tuple[int, int | None]]]]) -> dict[str, object]:
    """``[(name, vcpus, [(bank id, bytes or None), ...]), ...]`` -> libvirt keys."""
    rec: dict[str, object] = {"cpu.cache.monitor.count": len(monitors)}
    for n, (name, vcpus, banks) in enumerate(monitors):
        rec[f"cpu.cache.monitor.{n}.name"] = name
        rec[f"cpu.cache.monitor.{n}.vcpus"] = vcpus
        rec[f"cpu.cache.monitor.{n}.bank.count"] = len(banks)
        for i, (bid, nbytes) in enumerate(banks):
            rec[f"cpu.cache.monitor.{n}.bank.{i}.id"] = bid
            if nbytes is not None:
                rec[f"cpu.cache.monitor.{n}.bank.{i}.bytes"] = nbytes
    return rec


def mbw_keys(monitors: list[tuple[str, str, list[tuple[int, int | None, int | None]]]]
             ) -> dict[str, object]:
    """``[(name, vcpus, [(node id, local, total), ...]), ...]`` -> libvirt keys."""
    rec: dict[str, object] = {"memory.bandwidth.monitor.count": len(monitors)}
    for n, (name, vcpus, nodes) in enumerate(monitors):
        p = f"memory.bandwidth.monitor.{n}"
        rec[f"{p}.name"] = name
        rec[f"{p}.vcpus"] = vcpus
        rec[f"{p}.node.count"] = len(nodes)
        for i, (nid, local, total) in enumerate(nodes):
            rec[f"{p}.node.{i}.id"] = nid
            if local is not None:
                rec[f"{p}.node.{i}.bytes.local"] = local
            if total is not None:
                rec[f"{p}.node.{i}.bytes.total"] = total
    return rec


RUNNING = {"state.state": 1, "state.reason": 1, "cpu.time": 123456789, "cpu.user": 1000,
           "cpu.system": 2000}


def test_two_monitors_two_banks_are_summed_per_cache_id():
    rec = {**RUNNING, **cache_keys([
        ("vcpus_0-1", "0-1", [(0, 3 * MiB), (1, 1 * MiB)]),
        ("vcpus_2-3", "2-3", [(0, 2 * MiB), (1, 0)]),
    ])}
    stats = ls.parse_domain_stats(rec)
    assert stats.state == 1
    assert stats.cache_monitors is not None and len(stats.cache_monitors) == 2
    assert stats.cache_monitors[1] == ls.StatsCacheMonitor(
        "vcpus_2-3", "2-3", (ls.BankStat(0, 2 * MiB), ls.BankStat(1, 0)))
    reading = ls.to_reading(stats, "libvirt:7")
    assert reading.occupancy == {0: 5 * MiB, 1: 1 * MiB}
    assert reading.mbm_total == {} and reading.mbm_local == {}


def test_a_zero_the_hardware_gave_stays_zero():
    rec = cache_keys([("m", "0", [(0, 0)])])
    assert ls.to_reading(ls.parse_domain_stats(rec), "p").occupancy == {0: 0}


def test_missing_bytes_make_that_bank_none_not_zero():
    rec = cache_keys([
        ("a", "0", [(0, 4096), (1, None)]),
        ("b", "1", [(0, None), (1, 8192)]),
        ("c", "2", [(2, 100)]),
    ])
    occ = ls.to_reading(ls.parse_domain_stats(rec), "p").occupancy
    assert occ == {0: None, 1: None, 2: 100}


def test_a_monitor_without_bank_count_poisons_every_bank():
    rec = cache_keys([("a", "0", [(0, 4096), (1, 10)]), ("b", "1", [(0, 1)])])
    del rec["cpu.cache.monitor.1.bank.count"]
    occ = ls.to_reading(ls.parse_domain_stats(rec), "p").occupancy
    assert occ == {0: None, 1: None}


def test_a_bank_without_id_cannot_be_placed():
    rec = cache_keys([("a", "0", [(0, 4096), (1, 10)])])
    del rec["cpu.cache.monitor.0.bank.1.id"]
    assert ls.to_reading(ls.parse_domain_stats(rec), "p").occupancy == {0: None}


def test_count_says_more_monitors_than_present():
    rec = cache_keys([("a", "0", [(0, 4096)])])
    rec["cpu.cache.monitor.count"] = 2
    stats = ls.parse_domain_stats(rec)
    assert stats.cache_monitors is not None
    assert stats.cache_monitors[1] == ls.StatsCacheMonitor(None, None, None)
    assert ls.to_reading(stats, "p").occupancy == {0: None}


@pytest.mark.parametrize("bad", ["12", -1, True, 1.5, None, 10**9])
def test_garbage_values_are_no_data(bad):
    rec = cache_keys([("a", "0", [(0, 1)])])
    rec["cpu.cache.monitor.0.bank.0.bytes"] = bad
    rec["perf.cmt"] = bad
    stats = ls.parse_domain_stats(rec)
    expected = bad if bad == 10**9 else None
    assert stats.perf_cmt == expected
    assert ls.to_reading(stats, "p").occupancy == {0: expected}


def test_garbage_counts_do_not_loop():
    stats = ls.parse_domain_stats({"cpu.cache.monitor.count": 2**63,
                                   "memory.bandwidth.monitor.count": "many"})
    assert stats.cache_monitors is None and stats.bandwidth_monitors is None
    assert not stats.has_data


def test_memory_bandwidth_monitors_give_one_counter_per_monitor_and_node():
    rec = {**RUNNING, **cache_keys([("vcpus_0-3", "0-3", [(0, 10), (1, 20)])]),
           **mbw_keys([
               ("vcpus_0-1", "0-1", [(0, 1000, 3000), (1, 10, 20)]),
               ("vcpus_2-3", "2-3", [(0, None, 5), (1, 7, None)]),
           ])}
    reading = ls.to_reading(ls.parse_domain_stats(rec), "libvirt:3")
    assert reading.mbm_total == {
        "libvirt:3/vcpus_0-1/0": 3000, "libvirt:3/vcpus_0-1/1": 20,
        "libvirt:3/vcpus_2-3/0": 5, "libvirt:3/vcpus_2-3/1": None,
    }
    assert reading.mbm_local == {
        "libvirt:3/vcpus_0-1/0": 1000, "libvirt:3/vcpus_0-1/1": 10,
        "libvirt:3/vcpus_2-3/0": None, "libvirt:3/vcpus_2-3/1": 7,
    }


def test_counter_keys_change_with_the_domain_id():
    rec = mbw_keys([("m", "0", [(0, 1, 2)])])
    a = ls.to_reading(ls.parse_domain_stats(rec), "libvirt:1")
    b = ls.to_reading(ls.parse_domain_stats(rec), "libvirt:2")
    assert set(a.mbm_total).isdisjoint(b.mbm_total)


def test_perf_events_when_no_resctrl_monitor():
    rec = {**RUNNING, "perf.cmt": 6 * MiB, "perf.mbmt": 10**9, "perf.mbml": 10**8,
           "perf.cpu_cycles": 5}
    stats = ls.parse_domain_stats(rec)
    assert stats.has_cache_data
    reading = ls.to_reading(stats, "libvirt:9")
    assert reading.occupancy == {ALL_DOMAINS: 6 * MiB}
    assert reading.mbm_total == {"libvirt:9/perf": 10**9}
    assert reading.mbm_local == {"libvirt:9/perf": 10**8}


def test_perf_cmt_only_has_no_bandwidth_counters():
    reading = ls.to_reading(ls.parse_domain_stats({"perf.cmt": 1}), "p")
    assert reading.mbm_total == {} and reading.mbm_local == {}


def test_resctrl_monitors_win_over_perf():
    rec = {**cache_keys([("m", "0", [(0, 5)])]), "perf.cmt": 99}
    assert ls.to_reading(ls.parse_domain_stats(rec), "p").occupancy == {0: 5}


def test_no_data_reasons():
    nothing = ls.parse_domain_stats(RUNNING)
    assert not nothing.has_data
    assert "perf event cmt" in ls.no_data_reason(nothing)
    zero = ls.parse_domain_stats({**RUNNING, **cache_keys([]), **mbw_keys([])})
    assert not zero.has_data
    assert "no cache monitor configured" in ls.no_data_reason(zero)
    off = ls.parse_domain_stats({"state.state": 5, "state.reason": 1})
    assert "not running" in ls.no_data_reason(off)


#: ``state.state`` values and what :func:`is_active` answers. libvirt sends a
#: typed-parameter int from virDomainState; the rest is what a record must not
#: be trusted not to hold. ``MISSING`` stands for a record without the key.
MISSING = object()
STATES: list[tuple[object, bool]] = [
    (1, True), (2, True), (3, True),  # RUNNING, BLOCKED, PAUSED
    (0, False), (4, False), (5, False), (6, False), (7, False),  # NOSTATE .. PMSUSPENDED
    (8, False), (2**31 - 1, False),  # a newer libvirt's states
    # cannot be a virDomainState: the record did not say, as with no key
    (MISSING, True), (None, True), (True, True), (False, True), (-1, True), (-5, True),
    (2**31, True), (2**64 + 5, True), ("5", True), ("1", True), (5.0, True), (1.0, True),
    (b"\x05", True),
]


def with_state(rec: dict[str, object], state: object) -> dict[str, object]:
    return rec if state is MISSING else {**rec, "state.state": state}


@pytest.mark.parametrize(("state", "active"), STATES)
def test_is_active(state, active):
    assert ls.is_active(None if state is MISSING else state) is active
    assert ls.is_active(ls.parse_domain_stats(with_state({}, state)).state) is active


@pytest.mark.parametrize(("state", "active"), STATES)
def test_every_state_test_agrees_with_is_active(state, active):
    """The raw value and the parsed record, with and without cache keys, give one answer."""
    raw = None if state is MISSING else state
    assert (ls.state_reason(raw) is None) is active
    for keys in ({}, cache_keys([("m", "0", [(0, 5)])])):
        stats = ls.parse_domain_stats(with_state({**keys, "state.reason": 1}, state))
        assert ls.is_active(stats.state) is active
        assert (ls.state_reason(stats.state) is None) is active
        assert ("not running" in ls.no_data_reason(stats)) is not active


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), st.integers(-2**70, 2**70), st.integers(0, 9), st.booleans(),
                 st.floats(), st.text(max_size=4), st.binary(max_size=4)))
def test_is_active_same_on_raw_and_parsed_state(state):
    parsed = ls.parse_domain_stats({"state.state": state}).state
    assert ls.is_active(state) == ls.is_active(parsed) == (ls.state_reason(state) is None)
    assert parsed is None or ls.is_active(parsed) == (parsed in ls.ACTIVE_STATES)


def test_groups_are_the_documented_flags():
    libvirt = pytest.importorskip("libvirt")
    assert ls.VIR_DOMAIN_STATS_STATE == libvirt.VIR_DOMAIN_STATS_STATE
    assert ls.VIR_DOMAIN_STATS_CPU_TOTAL == libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
    assert ls.VIR_DOMAIN_STATS_PERF == libvirt.VIR_DOMAIN_STATS_PERF
    assert ls.VIR_DOMAIN_STATS_MEMORY == libvirt.VIR_DOMAIN_STATS_MEMORY


# --- capabilities ------------------------------------------------------------

CAPS = """<capabilities>

  <host>
    <uuid>7d9a6e2c-0b1a-4b8e-9f51-3a1c5f7e2d10</uuid>
    <cpu>
      <arch>x86_64</arch>
    </cpu>
    <power_management/>
    <iommu support='no'/>
    <cache>
      <bank id='0' level='3' type='both' size='15' unit='MiB' cpus='0-5,12-17'>
        <control granularity='768' min='1536' unit='KiB' type='both' maxAllocs='4'/>
      </bank>
      <bank id='1' level='3' type='both' size='15' unit='MiB' cpus='6-11,18-23'>
        <control granularity='768' min='1536' unit='KiB' type='both' maxAllocs='4'/>
      </bank>
      <monitor level='3' reuseThreshold='270336' maxMonitors='176'>
        <feature name='llc_occupancy'/>
        <feature name='mbm_total_bytes'/>
        <feature name='mbm_local_bytes'/>
      </monitor>
    </cache>
    <memory_bandwidth>
      <node id='0' cpus='0-5,12-17'>
        <control granularity='10' min='10' maxAllocs='4'/>
      </node>
      <monitor maxMonitors='176'>
        <feature name='mbm_total_bytes'/>
      </monitor>
    </memory_bandwidth>
  </host>
</capabilities>
"""


def test_capabilities_two_sockets():
    hc = ls.parse_capabilities_cache(CAPS)
    assert hc is not None
    assert hc.source == "libvirt"
    assert [(d.id, d.level, d.size, d.type, d.cpus) for d in hc.domains] == [
        (0, 3, 15 * MiB, "Unified", "0-5,12-17"), (1, 3, 15 * MiB, "Unified", "6-11,18-23")]
    assert hc.monitors_total == 176
    assert hc.size == 30 * MiB


def test_capabilities_without_cache_or_monitor():
    assert ls.parse_capabilities_cache("<capabilities><host/></capabilities>") is None
    no_mon = CAPS.replace("maxMonitors='176'>\n        <feature name='llc",
                          ">\n        <feature name='llc")
    hc = ls.parse_capabilities_cache(no_mon)
    assert hc is not None and hc.monitors_total is None


def test_capabilities_of_the_test_driver_have_no_cache():
    libvirt = pytest.importorskip("libvirt")
    conn = libvirt.open("test:///default")
    try:
        assert ls.parse_capabilities_cache(conn.getCapabilities()) is None
    finally:
        conn.close()


def test_capabilities_malformed():
    with pytest.raises(ValueError):
        ls.parse_capabilities_cache("<capabilities><host><cache>")


UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
bank_st = st.tuples(
    st.integers(0, 64),  # id
    st.sampled_from([1, 2, 3, 4]),  # level
    st.sampled_from(["both", "data", "code"]),
    st.integers(1, 4096),  # size
    st.sampled_from(sorted(UNITS)),
    st.sampled_from(["0", "0-3", "0-5,12-17", "1,3,5"]),
)


def format_caps(banks, max_monitors):
    """Like virCapabilitiesFormatCaches: banks, then the monitor."""
    out = ["<capabilities>\n  <host>\n    <cpu><arch>x86_64</arch></cpu>\n    <cache>\n"]
    for bid, level, ctype, size, unit, cpus in banks:
        out.append(f"      <bank id='{bid}' level='{level}' type='{ctype}' size='{size}' "
                   f"unit='{unit}' cpus='{cpus}'/>\n")
    if max_monitors is not None:
        out.append(f"      <monitor level='3' reuseThreshold='1024' maxMonitors='{max_monitors}'>"
                   "\n        <feature name='llc_occupancy'/>\n      </monitor>\n")
    out.append("    </cache>\n  </host>\n</capabilities>\n")
    return "".join(out)


@settings(max_examples=300, deadline=None)
@given(st.lists(bank_st, max_size=12), st.one_of(st.none(), st.integers(0, 10**6)))
def test_capabilities_parser_property(banks, max_monitors):
    hc = ls.parse_capabilities_cache(format_caps(banks, max_monitors))
    expected: dict[int, tuple[int, str, str]] = {}
    for bid, level, ctype, size, unit, cpus in banks:
        if level == 3 and ctype != "code" and bid not in expected:
            expected[bid] = (size * UNITS[unit], "Unified" if ctype == "both" else "Data", cpus)
    if not expected:
        assert hc is None
        return
    assert hc is not None
    assert [d.id for d in hc.domains] == sorted(expected)
    for d in hc.domains:
        assert (d.size, d.type, d.cpus) == expected[d.id] and d.level == 3
    assert hc.monitors_total == max_monitors
    assert hc.size == sum(v[0] for v in expected.values())


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_capabilities_parser_never_crashes_on_garbage(text):
    try:
        ls.parse_capabilities_cache(text)
    except ValueError:
        pass


monitor_st = st.tuples(
    st.text(min_size=1, max_size=8),
    st.just("0-1"),
    st.lists(st.tuples(st.integers(0, 4), st.one_of(st.none(), st.integers(0, 2**50))),
             max_size=4),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(monitor_st, max_size=5))
def test_occupancy_property(monitors):
    """Each cache id sums its banks' bytes; any missing value makes it None."""
    occ = ls.to_reading(ls.parse_domain_stats(cache_keys(monitors)), "p").occupancy
    expected: dict[int, int | None] = {}
    for _name, _vcpus, banks in monitors:
        for bid, nbytes in banks:
            prev = expected.get(bid, 0)
            expected[bid] = None if prev is None or nbytes is None else prev + nbytes
    assert occ == expected


@pytest.mark.parametrize("params, used", [
    ({"cpu.cache.monitor.count": 2, "perf.cmt": 7, "state.state": 1}, 3),
    ({"cpu.cache.monitor.count": 2, "state.state": 5}, 0),  # shut off
    ({"cpu.cache.monitor.count": 2}, 2),  # no state: the record did not say
    ({"perf.cmt": 0, "state.state": 3}, 1),  # paused, a cmt event that reads 0
    ({"cpu.cache.monitor.count": 5000, "state.state": 1}, 0),  # beyond the parser's bound
    ({"cpu.cache.monitor.count": -1, "perf.cmt": -4, "state.state": 1}, 0),
    ({"cpu.cache.monitor.count": True, "perf.cmt": "7", "state.state": 1}, 0),
    ({"state.state": 1}, 0),
])
def test_monitors_in_counts_what_the_parser_takes(params, used):  # type: ignore[no-untyped-def]
    assert ls.monitors_in(params) == used
    stats = ls.parse_domain_stats(params)
    parsed = len(stats.cache_monitors or ()) + (stats.perf_cmt is not None)
    assert used == (parsed if ls.is_active(stats.state) else 0)
