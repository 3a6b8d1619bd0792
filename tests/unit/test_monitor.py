"""The monitor layer: percent of the busiest domain, ALL_DOMAINS, rate-limited logs,
and CacheMonitor turning backend cycles into meter values."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ceilometer_cmt.monitor import CacheMonitor, InstanceMeters, RateLimitedLog, occupancy_meters
from ceilometer_cmt.readings import (
    ALL_DOMAINS,
    BackendCycle,
    CacheDomain,
    HostCache,
    InstanceReading,
    InstanceRef,
)

MIB = 1024 * 1024
TWO_SOCKETS = HostCache((CacheDomain(0, 3, 30 * MIB, cpus="0-9"),
                         CacheDomain(1, 3, 30 * MIB, cpus="10-19")), 176)
AMD = HostCache(tuple(CacheDomain(i, 3, 32 * MIB) for i in range(8)), 256)
UNEVEN = HostCache((CacheDomain(0, 3, 10 * MIB), CacheDomain(1, 3, 40 * MIB)))
U1 = "11111111-1111-4111-8111-111111111111"
U2 = "22222222-2222-4222-8222-222222222222"


def reading(occ: dict[int, int | None], total: dict[str, int | None] | None = None,
            local: dict[str, int | None] | None = None) -> InstanceReading:
    return InstanceReading(dict(occ), dict(total or {}), dict(local or {}))


# ------------------------------------------------------------- occupancy_meters
def test_percent_is_of_the_busiest_domain() -> None:
    # 80% of socket 0's L3 is 80, not 40 (the noisy-neighbour view)
    total, domains, pct = occupancy_meters(reading({0: 24 * MIB, 1: 0}), TWO_SOCKETS)
    assert total == 24 * MIB and domains == {0: 24 * MIB, 1: 0}
    assert pct == pytest.approx(80.0)


def test_percent_uses_each_domains_own_size() -> None:
    # 5 MiB of a 10 MiB domain (50%) beats 16 MiB of a 40 MiB one (40%)
    total, _, pct = occupancy_meters(reading({0: 5 * MIB, 1: 16 * MIB}), UNEVEN)
    assert total == 21 * MIB and pct == pytest.approx(50.0)


def test_host_wide_key_uses_total_size() -> None:
    total, domains, pct = occupancy_meters(reading({ALL_DOMAINS: 30 * MIB}), TWO_SOCKETS)
    assert total == 30 * MIB and domains == {ALL_DOMAINS: 30 * MIB}
    assert pct == pytest.approx(50.0)  # of 60 MiB
    _, _, pct = occupancy_meters(reading({ALL_DOMAINS: 64 * MIB}), AMD)
    assert pct == pytest.approx(25.0)  # of 8 x 32 MiB


def test_host_wide_without_host_cache_has_no_percent() -> None:
    assert occupancy_meters(reading({ALL_DOMAINS: 100}), HostCache(())) == (
        100, {ALL_DOMAINS: 100}, None)


def test_any_missing_domain_gives_nothing() -> None:
    assert occupancy_meters(reading({0: 5 * MIB, 1: None}), TWO_SOCKETS) == (None, None, None)
    assert occupancy_meters(reading({ALL_DOMAINS: None}), TWO_SOCKETS) == (None, None, None)
    assert occupancy_meters(reading({}), TWO_SOCKETS) == (None, None, None)


def test_zero_is_a_value() -> None:
    assert occupancy_meters(reading({0: 0, 1: 0}), TWO_SOCKETS) == (0, {0: 0, 1: 0}, 0.0)


def test_unknown_domain_counts_in_total_not_percent() -> None:
    total, _, pct = occupancy_meters(reading({0: 3 * MIB, 7: 9 * MIB}), TWO_SOCKETS)
    assert total == 12 * MIB and pct == pytest.approx(10.0)
    assert occupancy_meters(reading({7: 9 * MIB}), TWO_SOCKETS)[2] is None


@given(st.dictionaries(st.integers(0, 7), st.integers(0, 32 * MIB), min_size=1))
def test_percent_property(occ: dict[int, int]) -> None:
    total, domains, pct = occupancy_meters(reading(dict(occ)), AMD)
    assert total == sum(occ.values()) and domains == occ
    assert pct is not None and 0.0 <= pct <= 100.0
    assert pct == pytest.approx(max(100.0 * v / (32 * MIB) for v in occ.values()))
    # the busiest domain's percent is never below the host-wide one
    assert pct >= 100.0 * total / (8 * 32 * MIB) - 1e-9


# ---------------------------------------------------------------- RateLimitedLog
class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _records(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "ceilometer_cmt.monitor"]


def test_rate_limited_log_counts_all_logs_once_per_interval(caplog) -> None:  # type: ignore[no-untyped-def]
    clock = Clock()
    log = RateLimitedLog(600.0, clock)
    with caplog.at_level(logging.DEBUG, logger="ceilometer_cmt.monitor"):
        for step in range(10):
            clock.t = 1000.0 + step * 59.9  # ten calls within 540 s
            log(U1, "llc_occupancy gave no value")
        assert _records(caplog) == [f"{U1}: llc_occupancy gave no value"]
        assert log.counts["llc_occupancy gave no value"] == 10
        clock.t = 1600.0  # exactly one interval after the first log
        log(U1, "llc_occupancy gave no value")
        assert len(_records(caplog)) == 2
        clock.t = 2199.9
        log(U1, "llc_occupancy gave no value")
        assert len(_records(caplog)) == 2
        assert log.counts["llc_occupancy gave no value"] == 12


def test_rate_limited_log_keys_and_reasons_are_separate(caplog) -> None:  # type: ignore[no-untyped-def]
    clock = Clock()
    log = RateLimitedLog(600.0, clock)
    with caplog.at_level(logging.DEBUG, logger="ceilometer_cmt.monitor"):
        log(U1, "a")
        log(U2, "a")
        log(U1, "b")
        log(U1, "a")
        log(U2, "b", level=logging.WARNING)
    assert _records(caplog) == [f"{U1}: a", f"{U2}: a", f"{U1}: b", f"{U2}: b"]
    assert [r.levelno for r in caplog.records][-1] == logging.WARNING
    assert log.counts == {"a": 3, "b": 2}


def test_rate_limited_log_zero_interval_logs_everything(caplog) -> None:  # type: ignore[no-untyped-def]
    log = RateLimitedLog(0.0, Clock())
    with caplog.at_level(logging.INFO, logger="ceilometer_cmt.monitor"):
        for _ in range(3):
            log(U1, "x")
    assert len(_records(caplog)) == 3


@given(st.lists(st.tuples(st.sampled_from([U1, U2]), st.sampled_from(["a", "b"]),
                          st.floats(0, 1000)), max_size=40))
def test_rate_limited_log_property(calls: list[tuple[str, str, float]]) -> None:
    clock = Clock(0.0)
    log = RateLimitedLog(300.0, clock)
    logged: list[tuple[str, str, float]] = []
    handler = _ListHandler()
    logger = logging.getLogger("ceilometer_cmt.monitor")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        for key, reason, dt in calls:
            clock.t += dt
            before = len(handler.messages)
            log(key, reason)
            if len(handler.messages) > before:
                logged.append((key, reason, clock.t))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
    assert sum(log.counts.values()) == len(calls)
    # each (key, reason) logged on its first call, then at most once per interval
    for key, reason in {(k, r) for k, r, _ in calls}:
        times = [t for k, r, t in logged if (k, r) == (key, reason)]
        assert times, "the first occurrence is always logged"
        assert all(b - a >= 300.0 for a, b in zip(times, times[1:], strict=False))


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


# ------------------------------------------------------------------ CacheMonitor
class ScriptedBackend:
    """A Backend that replays prepared cycles (the real ones are tested elsewhere)."""

    name = "scripted"

    def __init__(self, host: HostCache, cycles: list[BackendCycle]) -> None:
        self.host = host
        self.cycles = list(cycles)
        self.seen: list[list[InstanceRef]] = []
        self.closed = False

    def host_cache(self) -> HostCache:
        return self.host

    def sync(self, instances: Sequence[InstanceRef]) -> BackendCycle:
        self.seen.append(list(instances))
        return self.cycles.pop(0)

    def close(self) -> None:
        self.closed = True


def cycle(readings: dict[str, InstanceReading], unmonitored: dict[str, str] | None = None,
          used: int | None = 3) -> BackendCycle:
    return BackendCycle(readings, unmonitored or {}, used)


def test_monitor_meters_over_cycles(caplog) -> None:  # type: ignore[no-untyped-def]
    clock = Clock(0.0)
    refs = [InstanceRef(U1, "instance-1"), InstanceRef(U2, "instance-2")]
    b = ScriptedBackend(TWO_SOCKETS, [
        cycle({U1: reading({0: 3 * MIB, 1: 6 * MIB}, {"/0": 1000, "/1": 0}, {"/0": 10})},
              {U2: "no free RMID (ENOSPC)"}),
        cycle({U1: reading({0: 3 * MIB, 1: None}, {"/0": 3000, "/1": 500}, {"/0": 20})},
              {U2: "no free RMID (ENOSPC)"}),
        cycle({U1: reading({0: 0, 1: 0}, {"/0": 100, "/1": 600}, {"/0": None})}),
    ])
    m = CacheMonitor(b, log_interval=600.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="ceilometer_cmt.monitor"):
        r = m.poll(refs)
        assert r.backend == "scripted" and r.host_cache is TWO_SOCKETS and r.monitors_used == 3
        assert r.unmonitored == {U2: "no free RMID (ENOSPC)"}
        pct = r.instances[U1].occupancy_percent
        assert pct == pytest.approx(20.0)
        assert r.instances[U1] == InstanceMeters(9 * MIB, {0: 3 * MIB, 1: 6 * MIB},
                                                 pct, 1000, 10, None, None)
        clock.t = 10.0
        r = m.poll(refs)
        meters = r.instances[U1]
        assert (meters.occupancy, meters.occupancy_domains, meters.occupancy_percent) == (
            None, None, None)  # one domain Unavailable: nothing, not a partial sum
        assert (meters.mbm_total_bytes, meters.mbm_total_rate) == (3500, 250.0)
        assert (meters.mbm_local_bytes, meters.mbm_local_rate) == (20, 1.0)
        clock.t = 20.0
        r = m.poll(refs)
        meters = r.instances[U1]
        assert meters.occupancy == 0 and meters.occupancy_percent == 0.0
        # counter "/0" restarted: cumulative carries on, no rate across the reset
        assert (meters.mbm_total_bytes, meters.mbm_total_rate) == (3700, None)
        assert (meters.mbm_local_bytes, meters.mbm_local_rate) == (None, None)
    assert b.seen == [refs] * 3
    msgs = _records(caplog)
    assert msgs.count(f"{U2}: not monitored: no free RMID (ENOSPC)") == 1  # rate-limited
    assert m.nodata.counts["not monitored: no free RMID (ENOSPC)"] == 2
    assert any("llc_occupancy gave no value" in x for x in msgs)
    assert any("mbm_local_bytes gave no value" in x for x in msgs)
    m.close()
    assert b.closed


def test_monitor_forgets_instances_that_left() -> None:
    clock = Clock(0.0)
    b = ScriptedBackend(TWO_SOCKETS, [
        cycle({U1: reading({0: 1}, {"/0": 5000}), U2: reading({0: 1}, {"/0": 7000})}),
        cycle({U2: reading({0: 1}, {"/0": 7100})}),
        cycle({U1: reading({0: 1}, {"/0": 100}), U2: reading({0: 1}, {"/0": 7200})}),
    ])
    m = CacheMonitor(b, clock=clock)
    m.poll([])
    clock.t = 1.0
    r = m.poll([])
    assert set(r.instances) == {U2} and r.instances[U2].mbm_total_rate == 100.0
    clock.t = 2.0
    r = m.poll([])
    # U1 came back (e.g. restarted on this host): a fresh counter, no rate yet
    assert r.instances[U1].mbm_total_bytes == 100 and r.instances[U1].mbm_total_rate is None
    assert r.instances[U2].mbm_total_bytes == 7200 and r.instances[U2].mbm_total_rate == 100.0


def test_monitor_keeps_counters_of_unmonitored_instances() -> None:
    clock = Clock(0.0)
    b = ScriptedBackend(TWO_SOCKETS, [
        cycle({U1: reading({0: 1}, {"/0": 5000})}),
        cycle({}, {U1: "process gone"}),
        cycle({U1: reading({0: 1}, {"/0": 100})}),  # group recreated meanwhile
    ])
    m = CacheMonitor(b, clock=clock)
    m.poll([])
    clock.t = 1.0
    assert m.poll([]).instances == {}
    clock.t = 2.0
    assert m.poll([]).instances[U1].mbm_total_bytes == 5100  # still monotonic


def test_rate_limited_log_stays_bounded_under_churn() -> None:
    from ceilometer_cmt.monitor import RateLimitedLog

    now = [0.0]
    log = RateLimitedLog(60.0, clock=lambda: now[0])
    for i in range(20000):
        now[0] = i * 0.1  # 2000 s of churn: every instance a new uuid and pidfile
        log(f"uuid-{i}", f"not monitored: no pidfile /run/libvirt/qemu/instance-{i}.pid")
    assert len(log._last) <= RateLimitedLog.MAX_ENTRIES  # noqa: SLF001
    assert len(log.counts) <= RateLimitedLog.MAX_ENTRIES
    # a recent key is still rate limited after pruning
    before = dict(log._last)  # noqa: SLF001
    key = max(before, key=before.get)
    log(*key)
    assert log._last[key] == before[key]  # noqa: SLF001


# ------------------------------------------------------- Intel AET telemetry
GJ = 1_000_000_000  # 10**-9 units per Joule


def aet(energy: dict[str, int | None] | None = None, cycles: dict[str, int | None] | None = None,
        uops: dict[str, int | None] | None = None,
        stalls: dict[str, int | None] | None = None) -> dict[str, dict[str, int | None]]:
    out = {"core_energy": energy, "unhalted_core_cycles": cycles, "uops_retired": uops,
           "stalls_llc_miss": stalls}
    return {k: dict(v) for k, v in out.items() if v is not None}


def aet_cycle(tele: dict[str, dict[str, int | None]],
              unmonitored: dict[str, str] | None = None) -> BackendCycle:
    c = cycle({U1: reading({0: 1})} if not unmonitored else {}, unmonitored)
    if tele:
        c.telemetry[U1] = tele
    return c


def telemetry_of(m: InstanceMeters) -> tuple[float | None, ...]:
    return (m.energy_core, m.power_core, m.cpu_ipc, m.llc_miss_stall_ratio)


def test_telemetry_meters_over_cycles(caplog) -> None:  # type: ignore[no-untyped-def]
    clock = Clock(0.0)
    b = ScriptedBackend(TWO_SOCKETS, [
        # first read: a baseline (the RMID may hold an earlier owner's counts)
        aet_cycle(aet({"/0": 100 * GJ, "/1": 50 * GJ}, {"/0": 10**9, "/1": 10**9},
                      {"/0": 2 * 10**9, "/1": 10**9}, {"/0": 10**8, "/1": 0})),
        # 10 s later: 30 J over both packages; 4e9 cycles, 6e9 uops, 1e9 stalls
        aet_cycle(aet({"/0": 120 * GJ, "/1": 60 * GJ}, {"/0": 3 * 10**9, "/1": 3 * 10**9},
                      {"/0": 6 * 10**9, "/1": 3 * 10**9}, {"/0": 6 * 10**8, "/1": 5 * 10**8})),
        # package 1 Unavailable: no energy, no power (never a partial sum);
        # cycles did not move (idle): no IPC, no ratio (not 0)
        aet_cycle(aet({"/0": 121 * GJ, "/1": None}, {"/0": 3 * 10**9, "/1": 3 * 10**9},
                      {"/0": 6 * 10**9, "/1": 3 * 10**9}, {"/0": 6 * 10**8, "/1": 5 * 10**8})),
        # energy complete again: cumulative continues, no power across the gap;
        # package 0's cycles went back (reset): no rate once
        aet_cycle(aet({"/0": 122 * GJ, "/1": 61 * GJ}, {"/0": 1000, "/1": 3 * 10**9 + 1000},
                      {"/0": 6 * 10**9 + 1000, "/1": 3 * 10**9},
                      {"/0": 6 * 10**8, "/1": 5 * 10**8})),
        aet_cycle(aet({"/0": 123 * GJ, "/1": 62 * GJ}, {"/0": 2000, "/1": 3 * 10**9 + 3000},
                      {"/0": 6 * 10**9 + 4000, "/1": 3 * 10**9},
                      {"/0": 6 * 10**8 + 300, "/1": 5 * 10**8})),
    ])
    m = CacheMonitor(b, clock=clock)
    with caplog.at_level(logging.INFO, logger="ceilometer_cmt.monitor"):
        assert telemetry_of(m.poll([]).instances[U1]) == (0.0, None, None, None)
        clock.t = 10.0
        assert telemetry_of(m.poll([]).instances[U1]) == (
            30.0, 3.0, pytest.approx(1.5), pytest.approx(0.25))
        clock.t = 20.0
        assert telemetry_of(m.poll([]).instances[U1]) == (None, None, None, None)
        clock.t = 30.0
        assert telemetry_of(m.poll([]).instances[U1]) == (33.0, None, None, None)
        clock.t = 40.0
        assert telemetry_of(m.poll([]).instances[U1]) == (
            35.0, pytest.approx(0.2), pytest.approx(1.0), pytest.approx(0.1))
    assert any("core_energy gave no value" in x for x in _records(caplog))


class SlowPlacingBackend(ScriptedBackend):
    """Placement before the reads takes ``delays[i]`` seconds of ``clock``
    in cycle ``i`` (a first cycle waits for the privsep daemon to start)."""

    def __init__(self, clock: Clock, delays: list[float], cycles: list[BackendCycle]) -> None:
        super().__init__(TWO_SOCKETS, cycles)
        self.clock, self.delays = clock, list(delays)

    def sync(self, instances: Sequence[InstanceRef]) -> BackendCycle:
        self.clock.t += self.delays.pop(0)
        return super().sync(instances)


def test_rates_are_over_the_time_between_reads_not_cycle_starts() -> None:
    # cycles start at 0 s and 5 s; the first read waits 3 s for placement:
    # 2 J and 2 GB moved between the reads at 3 s and 5 s are 1 W and 1 GB/s
    # (not 0.4 W and 0.4 GB/s over the 5 s between the starts)
    clock = Clock(0.0)
    first, second = aet_cycle(aet({"/0": 10 * GJ})), aet_cycle(aet({"/0": 12 * GJ}))
    first.readings[U1] = reading({0: 1}, {"/0": 10**9})
    second.readings[U1] = reading({0: 1}, {"/0": 3 * 10**9})
    m = CacheMonitor(SlowPlacingBackend(clock, [3.0, 0.0], [first, second]), clock=clock)
    assert m.poll([]).timestamp == 3.0
    clock.t = 5.0
    r = m.poll([])
    assert r.instances[U1].power_core == pytest.approx(1.0)
    assert r.instances[U1].mbm_total_rate == pytest.approx(1e9)


def test_a_cycle_for_host_meters_leaves_the_counters_alone() -> None:
    # counting reads at 0 s and 10 s, a host-meters read at 9.99 s between:
    # the rate is over the 10 s of the counting source (10 GB in 10 s, 3 J),
    # not the 10 ms since the host read (which saw 9 GB, 2 J)
    clock = Clock(0.0)
    reads = []
    for t, gb, joules in ((0.0, 0, 0), (9.99, 9, 2), (10.0, 10, 3)):
        c = aet_cycle(aet({"/0": joules * GJ}))
        c.readings[U1] = reading({0: 1}, {"/0": gb * 10**9})
        reads.append((t, c))
    m = CacheMonitor(ScriptedBackend(TWO_SOCKETS, [c for _, c in reads]), clock=clock)
    m.poll([])
    clock.t = 9.99
    host = m.poll([], counting=False)
    assert host.instances[U1].occupancy == 1  # its instances are there ...
    assert host.instances[U1].mbm_total_bytes is None  # ... not their counters
    assert telemetry_of(host.instances[U1]) == (None, None, None, None)
    clock.t = 10.0
    meters = m.poll([]).instances[U1]
    assert (meters.mbm_total_bytes, meters.mbm_total_rate) == (10 * 10**9, pytest.approx(1e9))
    assert telemetry_of(meters)[:2] == (3.0, pytest.approx(0.3))


def test_a_read_is_counted_once_and_never_after_a_newer_one() -> None:
    clock = Clock(0.0)
    cycles = [cycle({U1: reading({0: 1}, {"/0": n})}) for n in (100, 300, 200)]
    m = CacheMonitor(ScriptedBackend(TWO_SOCKETS, cycles), clock=clock)
    first = m.poll([], counting=False)
    assert first.instances[U1].mbm_total_bytes is None
    m.count(first)  # a per-instance pollster of the same source, after a host one
    assert first.instances[U1].mbm_total_bytes == 100
    clock.t = 1.0
    newer = m.poll([], counting=False)
    clock.t = 2.0
    newest = m.poll([])
    m.count(newer)  # read before the newest: counting it would look like a reset
    m.count(newest)  # counted already: nothing twice
    assert newer.instances[U1].mbm_total_bytes is None
    assert (newest.instances[U1].mbm_total_bytes, newest.instances[U1].mbm_total_rate) == (
        200, 50.0)


def test_telemetry_meters_only_for_the_events_the_host_has() -> None:
    clock = Clock(0.0)
    b = ScriptedBackend(TWO_SOCKETS, [
        aet_cycle(aet(energy={"/0": 0})), aet_cycle(aet(energy={"/0": GJ // 1000})),
        cycle({U1: reading({0: 1})}), cycle({U1: reading({0: 1})}),
    ])
    m = CacheMonitor(b, clock=clock)
    m.poll([])
    clock.t = 1.0
    # a millijoule is a millijoule, not 0
    assert telemetry_of(m.poll([]).instances[U1]) == (0.001, 0.001, None, None)
    clock.t = 2.0
    assert telemetry_of(m.poll([]).instances[U1]) == (None, None, None, None)
    assert m._telemetry == {}  # no telemetry: nothing kept
    clock.t = 3.0
    assert telemetry_of(m.poll([]).instances[U1]) == (None, None, None, None)


def test_telemetry_of_a_recreated_group_starts_at_its_baseline() -> None:
    """New counter keys (a group made again) may start at an old RMID's counts:
    counted from their first read, with no rate across the change."""
    clock = Clock(0.0)
    b = ScriptedBackend(TWO_SOCKETS, [
        aet_cycle(aet({"/0": 5 * GJ})), aet_cycle(aet({"/0": 7 * GJ})),
        aet_cycle({}, {U1: "process gone"}),
        aet_cycle(aet({"/0#1": 900 * GJ})), aet_cycle(aet({"/0#1": 901 * GJ})),
    ])
    m = CacheMonitor(b, clock=clock)
    values = []
    for t in range(5):
        clock.t = float(t)
        r = m.poll([])
        values.append(telemetry_of(r.instances[U1])[:2] if U1 in r.instances else None)
    assert values == [(0.0, None), (2.0, 2.0), None, (2.0, None), (3.0, 1.0)]
