"""More properties of :mod:`ceilometer_cmt.backends.libvirt.stats` (bulk-stats records,
capabilities).

``test_stats.py`` covers occupancy and the well-formed capabilities
XML; here: memory bandwidth records, perf keys, records whose values have any
type libvirt's typed parameters can carry (and some it cannot), and
capabilities banks with hostile attribute values.
"""

from __future__ import annotations

from xml.sax.saxutils import quoteattr

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ceilometer_cmt.backends.libvirt import stats as ls
from ceilometer_cmt.readings import ALL_DOMAINS
from tests.unit.backends.libvirt.test_stats import mbw_keys

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
U64 = st.integers(0, 2**64 - 1)
maybe_u64 = st.none() | U64


def mbw_record(monitors: list[tuple[str, list[tuple[int, int | None, int | None]]]]
               ) -> dict[str, object]:
    """As qemuDomainGetStatsMemoryBandwidth writes them; absent values are absent keys."""
    return {"state.state": 1, **mbw_keys([(name, "0-1", nodes) for name, nodes in monitors])}


node_lists = st.lists(st.tuples(st.integers(0, 7), maybe_u64, maybe_u64), max_size=4,
                      unique_by=lambda t: t[0])
mbw_monitors = st.lists(st.tuples(st.from_regex(r"\A[a-z0-9_-]{1,12}\Z"), node_lists),
                        max_size=4, unique_by=lambda t: t[0])


@SETTINGS
@given(mbw_monitors, st.text(min_size=1, max_size=10))
def test_bandwidth_record_round_trip(monitors: list[tuple[str, list[tuple[int, int | None,
                                                                          int | None]]]],
                                     prefix: str) -> None:
    """One counter per (monitor, node); an absent byte count is None, never 0."""
    reading = ls.to_reading(ls.parse_domain_stats(mbw_record(monitors)), prefix)
    total: dict[str, int | None] = {}
    local: dict[str, int | None] = {}
    for name, nodes in monitors:
        for nid, loc, tot in nodes:
            total[f"{prefix}/{name}/{nid}"] = tot
            local[f"{prefix}/{name}/{nid}"] = loc
    assert reading.mbm_total == total
    assert reading.mbm_local == local
    assert reading.occupancy == {}


@SETTINGS
@given(maybe_u64, maybe_u64, maybe_u64, st.sampled_from([1, 2, 3]))
def test_perf_keys(cmt: int | None, mbmt: int | None, mbml: int | None, state: int) -> None:
    rec: dict[str, object] = {"state.state": state}
    for key, v in (("perf.cmt", cmt), ("perf.mbmt", mbmt), ("perf.mbml", mbml)):
        if v is not None:
            rec[key] = v
    stats = ls.parse_domain_stats(rec)
    assert (stats.perf_cmt, stats.perf_mbmt, stats.perf_mbml) == (cmt, mbmt, mbml)
    assert stats.has_data == any(v is not None for v in (cmt, mbmt, mbml))
    r = ls.to_reading(stats, "d7")
    assert r.occupancy == ({} if cmt is None else {ALL_DOMAINS: cmt})
    assert r.mbm_total == ({} if mbmt is None else {"d7/perf": mbmt})
    assert r.mbm_local == ({} if mbml is None else {"d7/perf": mbml})


# ---------------------------------------------------------------- hostile records

idx = st.integers(0, 3).map(str)
KEYS = st.one_of(
    st.sampled_from(["state.state", "cpu.cache.monitor.count", "memory.bandwidth.monitor.count",
                     "perf.cmt", "perf.mbmt", "perf.mbml"]),
    st.builds("cpu.cache.monitor.{}.{}".format, idx,
              st.sampled_from(["name", "vcpus", "bank.count"])),
    st.builds("cpu.cache.monitor.{}.bank.{}.{}".format, idx, idx,
              st.sampled_from(["id", "bytes"])),
    st.builds("memory.bandwidth.monitor.{}.{}".format, idx,
              st.sampled_from(["name", "vcpus", "node.count"])),
    st.builds("memory.bandwidth.monitor.{}.node.{}.{}".format, idx, idx,
              st.sampled_from(["id", "bytes.local", "bytes.total"])),
)
VALUES = st.one_of(st.integers(-2**70, 2**70), st.integers(0, 5), st.booleans(), st.floats(),
                   st.text(max_size=6), st.none(), st.binary(max_size=4))


def valid_uints(rec: dict[str, object]) -> set[int]:
    return {v for v in rec.values() if type(v) is int and v >= 0}


@SETTINGS
@given(st.dictionaries(KEYS, VALUES, max_size=25), st.text(max_size=5))
@example({"cpu.cache.monitor.count": 10**9}, "p")
@example({"memory.bandwidth.monitor.count": 2**64 - 1}, "p")
@example({"cpu.cache.monitor.count": True, "perf.cmt": False}, "p")
def test_any_record_parses_and_invents_no_value(rec: dict[str, object], prefix: str) -> None:
    """Wrong types, negatives, bools and huge counts: parsed without error; every
    number in the reading is a value of the record (or a sum of them), none made up."""
    stats = ls.parse_domain_stats(rec)
    reading = ls.to_reading(stats, prefix)
    ls.no_data_reason(stats)
    ints = valid_uints(rec)
    for mbm in (reading.mbm_total, reading.mbm_local):
        assert all(v is None or v in ints for v in mbm.values())
    occ_values = [v for v in reading.occupancy.values() if v is not None]
    if occ_values and not stats.cache_monitors:
        assert occ_values == [rec["perf.cmt"]]
    for v in occ_values:  # a sum of at most 4 x 4 bank values of the record
        assert v <= 16 * max(ints)
    if 0 not in ints:
        assert 0 not in occ_values
        assert all(v != 0 for m in (reading.mbm_total, reading.mbm_local) for v in m.values())


# ---------------------------------------------------------------- capabilities attributes

ATTR = st.one_of(st.integers(0, 64).map(str),
                 st.text(st.characters(exclude_categories=("Cs", "Cc")), max_size=6),
                 st.sampled_from(["\u00b2", "\u0661", " 3 ", "3.0", "-1", "0x3", "9" * 5000]))


def caps(banks: list[dict[str, str]]) -> str:
    body = "".join("<bank " + " ".join(f"{k}={quoteattr(v)}" for k, v in b.items()) + "/>"
                   for b in banks)
    return f"<capabilities><host><cache>{body}</cache></host></capabilities>"


def plain_uint(v: str) -> int | None:
    v = v.strip()
    return int(v) if v.isascii() and v.isdigit() and len(v) <= 20 else None


@SETTINGS
@given(st.lists(st.fixed_dictionaries({"id": ATTR, "level": st.just("3") | ATTR,
                                       "size": ATTR, "unit": st.just("KiB"),
                                       "type": st.just("both"), "cpus": st.just("0-3")}),
                max_size=6))
@example([{"id": "0", "level": "3", "size": "\u00b2", "unit": "KiB", "type": "both",
           "cpus": "0"},
          {"id": "1", "level": "3", "size": "1024", "unit": "KiB", "type": "both",
           "cpus": "1"}])
def test_capabilities_bank_with_bad_number_is_skipped_not_fatal(banks: list[dict[str, str]]
                                                                ) -> None:
    """A bank whose id/level/size is not a plain number is skipped; the others stay."""
    hc = ls.parse_capabilities_cache(caps(banks))
    expected: dict[int, int] = {}
    for b in banks:
        bid, level, size = plain_uint(b["id"]), plain_uint(b["level"]), plain_uint(b["size"])
        if bid is not None and level == 3 and size is not None and bid not in expected:
            expected[bid] = size * 1024
    if not expected:
        assert hc is None
        return
    assert hc is not None
    assert {d.id: d.size for d in hc.domains} == expected
