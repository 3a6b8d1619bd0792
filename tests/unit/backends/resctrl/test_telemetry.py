"""Intel AET telemetry (PERF_PKG): the exact fixed-point parser, info, and
reading groups' package values on kernel-format fixture trees."""

from __future__ import annotations

import os
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ceilometer_cmt.backends.resctrl import fs, telemetry
from ceilometer_cmt.backends.resctrl.values import ValueReader
from ceilometer_cmt.readings import NANO, TELEMETRY_EVENTS, InstanceReading
from ceilometer_cmt.simulator.topology import get_topology
from ceilometer_cmt.testing.kernel_trees import build_resctrl
from ceilometer_cmt.testing.perf_pkg_tree import (
    PerfPkgKernelOps,
    build_perf_pkg,
    raw_fixed,
    set_telemetry,
)

INTEL_2S = get_topology("intel-2s")

U64 = (1 << 64) - 1
#: decplaces[] of fs/resctrl/ctrlmondata.c, written out again here
DECPLACES = [1, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 6, 6, 6, 7, 7, 7, 7, 8, 8,
             8, 9]


def kernel_print(binary_bits: int, val: int) -> bytes:
    """print_event_value() of ctrlmondata.c, step by step in u64 arithmetic."""
    frac = val & ((1 << binary_bits) - 1)
    frac = (frac * 10 ** DECPLACES[binary_bits]) & U64
    frac = (frac + (1 << (binary_bits - 1))) & U64
    frac >>= binary_bits
    return b"%d.%0*d\n" % (val >> binary_bits, DECPLACES[binary_bits], frac)


bits = st.integers(min_value=1, max_value=27)
u63 = st.integers(min_value=0, max_value=(1 << 63) - 1)  # DATA_VALID bit 63 is off


# ------------------------------------------------------------------ parser

def test_parse_fixed_examples() -> None:
    assert telemetry.parse_fixed(b"12.345678\n") == 12_345_678_000
    assert telemetry.parse_fixed(b"0.000001\n") == 1000  # a microjoule, not 0
    assert telemetry.parse_fixed(b"0.000000\n") == 0
    assert telemetry.parse_fixed(b"7\n") == 7 * NANO
    assert telemetry.parse_fixed(b"1.123456789\n") == 1_123_456_789
    for word in ("Unavailable", "Error"):
        with pytest.raises(fs.ValueMissing) as e:
            telemetry.parse_fixed(f"{word}\n".encode())
        assert e.value.reason == word
    for bad in (b"", b"\n", b"1.", b".5", b"-1.0", b"1.2.3", b"1.1234567890", b"\xd9\xa1.0",
                b"1e3", b"0x10"):
        with pytest.raises(fs.ValueMissing, match="malformed"):
            telemetry.parse_fixed(bad)


def test_parse_count() -> None:
    assert telemetry.parse_count(b"18446744073709551615\n") == U64
    with pytest.raises(fs.ValueMissing, match="Unavailable"):
        telemetry.parse_count(b"Unavailable\n")
    with pytest.raises(fs.ValueMissing, match="malformed"):
        telemetry.parse_count(b"1.5\n")


@given(bits, u63)
def test_round_trip_against_the_kernels_print(binary_bits: int, val: int) -> None:
    """The parsed value is the printed one exactly, and within half a printed
    digit of the register's value."""
    text = kernel_print(binary_bits, val)
    parsed = telemetry.parse_fixed(text)
    d = DECPLACES[binary_bits]
    assert Fraction(parsed, NANO) == Fraction(text.strip().decode())
    exact = Fraction(val, 1 << binary_bits)
    assert abs(Fraction(parsed, NANO) - exact) <= Fraction(1, 2 * 10**d)


@given(bits, u63, u63)
def test_no_negative_delta_between_two_reads(binary_bits: int, a: int, b: int) -> None:
    """A counter that went up never reads lower: the rounding keeps the order."""
    lo, hi = min(a, b), max(a, b)
    assert telemetry.parse_fixed(kernel_print(binary_bits, lo)) <= \
        telemetry.parse_fixed(kernel_print(binary_bits, hi))


@given(bits, st.integers(min_value=1, max_value=(1 << 40)))
def test_tiny_values_are_not_rounded_to_zero(binary_bits: int, val: int) -> None:
    """What the kernel prints as non-zero parses as non-zero, and a value of at
    least half a printed digit is printed non-zero."""
    text = kernel_print(binary_bits, val)
    parsed = telemetry.parse_fixed(text)
    assert (parsed > 0) == any(c in b"123456789" for c in text)
    if Fraction(val, 1 << binary_bits) >= Fraction(1, 2 * 10 ** DECPLACES[binary_bits]):
        assert parsed > 0


@given(st.lists(u63.map(lambda v: v >> 8), min_size=1, max_size=4))
def test_sum_over_packages_is_exact(vals: list[int]) -> None:
    total = sum(telemetry.parse_fixed(kernel_print(18, v)) for v in vals)
    assert Fraction(total, NANO) == sum(Fraction(kernel_print(18, v).strip().decode())
                                        for v in vals)


# -------------------------------------------------------------------- info

def _tree(tmp_path, **kw):  # type: ignore[no-untyped-def]
    root = build_resctrl(str(tmp_path / "r"), INTEL_2S)
    build_perf_pkg(root, **kw)
    return root


def test_read_info(tmp_path) -> None:  # type: ignore[no-untyped-def]
    root = _tree(tmp_path)
    info = telemetry.read_info(root)
    assert info is not None
    assert info.num_rmids == 576
    assert info.mon_features[0] == "core_energy" and len(info.mon_features) == 9
    assert info.packages == ((0, "mon_PERF_PKG_00"), (1, "mon_PERF_PKG_01"))
    assert info.events == TELEMETRY_EVENTS
    assert telemetry.group_limit(1024, info) == 576
    assert telemetry.group_limit(176, info) == 176
    assert telemetry.group_limit(None, info) == 576


def test_read_info_without_perf_pkg(tmp_path) -> None:  # type: ignore[no-untyped-def]
    root = build_resctrl(str(tmp_path / "r"), INTEL_2S)
    assert telemetry.read_info(root) is None
    assert telemetry.group_limit(176, None) == 176


def test_only_the_events_the_host_has(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # an energy-only host (rdt=energy: the perf group not enabled)
    root = _tree(tmp_path, features=("core_energy", "activity"), packages=(0,))
    info = telemetry.read_info(root)
    assert info is not None and info.events == ("core_energy",)
    assert info.packages == ((0, "mon_PERF_PKG_00"),)


# ------------------------------------------------------------------ reader

class Budget:
    def __init__(self, n: int) -> None:
        self.fd_budget, self.open_fds = n, 0


def _group(tmp_path, **kw):  # type: ignore[no-untyped-def]
    root = _tree(tmp_path, **kw)
    g = os.path.join(root, "mon_groups", "ceilometer-x")
    PerfPkgKernelOps(root, INTEL_2S, **kw).mkdir(g)
    info = telemetry.read_info(root)
    assert info is not None
    return root, g, info


@pytest.mark.parametrize("budget", [100, 3, 0])
def test_reader_reads_every_package(tmp_path, budget: int) -> None:  # type: ignore[no-untyped-def]
    _root, g, info = _group(tmp_path)
    b = Budget(budget)
    reader = telemetry.TelemetryReader(info, b)
    set_telemetry(g, 0, "core_energy", raw_fixed(Fraction(3, 2)))
    set_telemetry(g, 1, "core_energy", 1)  # the smallest step: 0.000004
    set_telemetry(g, 0, "unhalted_core_cycles", 1000)
    set_telemetry(g, 1, "uops_retired", "Unavailable")
    out: dict[str, dict[str, int | None]] = {}
    reader.read(out, g, "", "")
    assert out["core_energy"] == {"/0": 1_500_000_000, "/1": 4000}
    assert out["unhalted_core_cycles"] == {"/0": 1000, "/1": 0}
    assert out["uops_retired"] == {"/0": 0, "/1": None}
    assert set(out) == set(TELEMETRY_EVENTS)
    assert b.open_fds == min(budget, 8)
    # kept fds give fresh values
    set_telemetry(g, 0, "unhalted_core_cycles", 2000)
    out = {}
    reader.read(out, g, "ctl", "#1")
    assert out["unhalted_core_cycles"]["/0"] == 2000  # the keys were made once
    reader.close()
    assert b.open_fds == 0


def test_reader_shares_the_value_readers_budget(tmp_path) -> None:  # type: ignore[no-untyped-def]
    _root, g, info = _group(tmp_path)
    values = ValueReader(fs.list_domains(g), fs.EVENTS, fd_budget=10)
    reading = InstanceReading({}, {}, {})
    values.read(reading, g, "", "")
    assert values.open_fds == 6
    reader = telemetry.TelemetryReader(info, values)
    reader.read({}, g, "", "")
    assert values.open_fds == 10  # 4 more, then opened at each read
    reader.forget(g)
    values.forget(g)
    assert values.open_fds == 0


def test_vanished_group_reads_none_and_closes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    root, g, info = _group(tmp_path)
    b = Budget(100)
    reader = telemetry.TelemetryReader(info, b)
    reader.read({}, g, "", "")
    PerfPkgKernelOps(root, INTEL_2S).rmdir(g)
    out: dict[str, dict[str, int | None]] = {}
    reader.read(out, g, "", "")  # a plain file stays readable: no ENODEV here
    reader.forget(g)
    assert b.open_fds == 0
    out = {}
    reader.read(out, g, "", "")  # opened anew: ENOENT -> no data, no exception
    assert all(v is None for ev in out.values() for v in ev.values())
    assert b.open_fds == 0


@pytest.mark.parametrize("events,expected", [
    ({"core_energy"}, ("core_energy",)),  # energy.core / power.core alone
    ({"uops_retired", "unhalted_core_cycles", "llc_occupancy"},
     ("unhalted_core_cycles", "uops_retired")),  # cpu.ipc
    (None, TELEMETRY_EVENTS),
    (frozenset(), ()),
])
def test_reader_opens_and_reads_only_the_events_asked_for(tmp_path, events, expected
                                                          ) -> None:  # type: ignore[no-untyped-def]
    from collections import Counter

    from ceilometer_cmt.testing.kernel_trees import file_calls

    _root, g, info = _group(tmp_path)
    assert telemetry.wanted_events(info, events) == tuple(
        e for e in TELEMETRY_EVENTS if e in expected)
    reader = telemetry.TelemetryReader(info, Budget(0), events)  # no fd kept: a read is an open
    out: dict[str, dict[str, int | None]] = {}
    with file_calls(os.path.join(g, "mon_data")) as calls:
        reader.read(out, g, "", "")
    assert Counter(os.path.basename(p) for p in calls.opens) == dict.fromkeys(expected, 2)
    assert sorted(out) == sorted(expected)
