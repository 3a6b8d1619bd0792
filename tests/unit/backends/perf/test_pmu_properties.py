"""Property-based tests of every parser in :mod:`ceilometer_cmt.backends.perf.pmu`.

The formatters below write what the kernel's sysfs ABI says a PMU publishes
(``Documentation/ABI/testing/sysfs-bus-event_source-devices-events`` and
``-format``):

* ``format/<term>``: ``config1:1,6-10,44``: the bits of ``config``/``config1``/
  ``config2`` a term occupies; the term's value fills them from the lowest
  bit up (perf's ``pmu_format_value`` walks the bitmap in ascending order,
  whatever order the ranges are listed in);
* ``events/<event>``: ``<term>[=<value>][,<term>[=<value>]]...`` with values
  in ``0x`` lowercase hex, a bare term meaning 0x1;
* ``events/<event>.scale``: a floating point value in scientific notation
  (``2.3283064365386962890625e-10``), ``.unit`` an English plural unit.

The properties: what the formatter writes parses back to what it was made
from; arbitrary text fails only with ``ValueError`` (pure parsers) or
``PmuMalformed`` (files), and in bounded time; a value never silently
becomes 0; out-of-range and overlapping bit fields are refused. The last
section checks ``struct perf_event_attr`` and the perf constants against this
machine's uapi header, compiled with the C compiler.
"""

from __future__ import annotations

import ctypes
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ceilometer_cmt.backends.perf import abi, syscall
from ceilometer_cmt.backends.perf import pmu as perf_pmu
from ceilometer_cmt.backends.perf.pmu import CONFIG_WORDS, PmuMalformed
from ceilometer_cmt.errors import BackendUnavailable

Layout = dict[str, tuple[str, tuple[int, ...]]]

# ---------------------------------------------------------------- formatters (kernel ABI)


def bit_ranges(bits: list[int]) -> list[tuple[int, int]]:
    """Ascending bits -> maximal ``(lo, hi)`` runs."""
    runs: list[tuple[int, int]] = []
    for b in sorted(bits):
        if runs and runs[-1][1] == b - 1:
            runs[-1] = (runs[-1][0], b)
        else:
            runs.append((b, b))
    return runs


def format_range(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}-{hi}"


def format_format(word: str, runs: list[tuple[int, int]]) -> str:
    """``format/<term>`` text: ``config1:1,6-10,44``."""
    return f"{word}:" + ",".join(format_range(lo, hi) for lo, hi in runs)


def format_event(terms: list[tuple[str, int]], bare_one: bool = True) -> str:
    """``events/<event>`` text: ``event=0x423,inv,cmask=0x3``."""
    return ",".join(name if value == 1 and bare_one else f"{name}={value:#x}"
                    for name, value in terms)


def pmu_format_value(bits: tuple[int, ...], value: int) -> int:
    """perf's ``pmu_format_value``: value bit i -> the i-th set bit, low to high."""
    word, vbit = 0, 0
    for fbit in range(64):
        if fbit in bits:
            if value >> vbit & 1:
                word |= 1 << fbit
            vbit += 1
    return word


def extract(word: int, bits: tuple[int, ...]) -> int:
    """The inverse: a term's value read back out of a config word."""
    return sum((word >> b & 1) << i for i, b in enumerate(sorted(bits)))


def sci(mantissa: int, exponent: int) -> str:
    """A positive decimal in scientific notation, as ``%e``-style C code writes it."""
    digits = str(mantissa)
    if len(digits) == 1:
        return f"{digits}e{exponent:+03d}"
    return f"{digits[0]}.{digits[1:]}e{exponent:+03d}"


# ---------------------------------------------------------------- strategies

U64 = st.integers(0, 2**64 - 1)
term_names = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,11}\Z").filter(
    lambda n: n not in CONFIG_WORDS)
words = st.sampled_from(CONFIG_WORDS)
bit_sets = st.sets(st.integers(0, 63), min_size=1, max_size=64)


@st.composite
def layouts(draw: st.DrawFn, max_terms: int = 4) -> Layout:
    """Disjoint formats for a few terms, spread over the three config words."""
    free = {w: set(range(64)) for w in CONFIG_WORDS}
    names = draw(st.lists(term_names, min_size=1, max_size=max_terms, unique=True))
    out: Layout = {}
    for name in names:
        word = draw(words)
        if not free[word]:
            continue
        bits = draw(st.sets(st.sampled_from(sorted(free[word])), min_size=1, max_size=64))
        free[word] -= bits
        out[name] = (word, tuple(sorted(bits)))
    return out


@st.composite
def layouts_and_values(draw: st.DrawFn) -> tuple[Layout, list[tuple[str, int]]]:
    layout = draw(layouts())
    terms = [(name, draw(st.integers(0, 2 ** len(bits) - 1)))
             for name, (_w, bits) in layout.items()]
    return layout, draw(st.permutations(terms))


@st.composite
def scales(draw: st.DrawFn) -> tuple[str, Fraction]:
    """(text the kernel would write, its exact value), positive."""
    kind = draw(st.sampled_from(["uint", "sci", "fixed"]))
    if kind == "uint":  # cqm.c: "%u" of the CPUID occupancy scale
        n = draw(st.integers(1, 2**32 - 1))
        return str(n), Fraction(n)
    mantissa = draw(st.integers(1, 10**30))
    exponent = draw(st.integers(-40, 40))
    if kind == "sci":
        digits = len(str(mantissa))
        return sci(mantissa, exponent), Fraction(mantissa, 10 ** (digits - 1)) * Fraction(
            10) ** exponent
    places = draw(st.integers(0, 30))
    s = str(mantissa).rjust(places + 1, "0")
    text = s if places == 0 else f"{s[:-places]}.{s[-places:]}"
    return text, Fraction(mantissa, 10**places)


UNITS = {"Bytes": 1, "MB": 10**6, "KB": 10**3, "GB": 10**9, "KiB": 2**10, "MiB": 2**20,
         "GiB": 2**30}

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- parse_int

@SETTINGS
@given(U64, st.sampled_from(["{:#x}", "{:#X}", "{:d}", "{:#010x}", " {:d}\n"]))
def test_int_round_trip(n: int, fmt: str) -> None:
    assert perf_pmu.parse_int(fmt.format(n)) == n


@SETTINGS
@given(st.text(max_size=40))
@example("0x")
@example("-1")
@example("1_000")
@example("\u0661")  # ARABIC-INDIC DIGIT ONE
@example("0b1")
@example("1" * 5000)
def test_int_garbage_is_a_value_error(text: str) -> None:
    try:
        n = perf_pmu.parse_int(text)
    except ValueError:
        return
    t = text.strip()
    assert n >= 0 and t and all(c in "0123456789abcdefABCDEFxX" for c in t)
    assert n == int(t, 16 if t[:2].lower() == "0x" else 10)


# ---------------------------------------------------------------- format/

@SETTINGS
@given(words, bit_sets, st.randoms(use_true_random=False), st.booleans())
def test_format_round_trip(word: str, bits: set[int], rnd: object, split: bool) -> None:
    """Any listing of the runs, in any order, gives the bits low to high."""
    runs = bit_ranges(sorted(bits))
    if split:  # "0-3" may also be written "0-1,2-3"
        runs = [r for lo, hi in runs for r in ([(lo, lo), (lo + 1, hi)] if hi > lo else
                                               [(lo, hi)])]
    rnd.shuffle(runs)  # type: ignore[attr-defined]
    assert perf_pmu.parse_format(format_format(word, runs)) == (word, tuple(sorted(bits)))


@example(word="config", runs=[(8, 15), (0, 7)])
@SETTINGS
@given(words, st.lists(st.tuples(st.integers(0, 63), st.integers(0, 63)).map(sorted)
                       .map(tuple), min_size=1, max_size=6))
def test_format_encodes_as_perf_does(word: str, runs: list[tuple[int, int]]) -> None:
    """``config:8-15,0-7`` and ``config:0-15`` put value bit 0 in config bit 0."""
    bits = [b for lo, hi in runs for b in range(lo, hi + 1)]
    text = format_format(word, runs)
    if len(set(bits)) != len(bits):
        with pytest.raises(ValueError, match="overlapping"):
            perf_pmu.parse_format(text)
        return
    fmt = perf_pmu.parse_format(text)
    value = (1 << len(bits)) - 1 & 0x5A5A5A5A5A5A5A5A
    got = perf_pmu.encode_terms([("t", value)], {"t": fmt})
    assert got[word] == pmu_format_value(tuple(bits), value)


@SETTINGS
@given(words, st.integers(0, 200), st.integers(0, 200))
def test_format_range_out_of_bounds_or_reversed_is_refused(word: str, lo: int, hi: int) -> None:
    text = f"{word}:{lo}-{hi}"
    if lo <= hi <= 63:
        assert perf_pmu.parse_format(text) == (word, tuple(range(lo, hi + 1)))
    else:
        with pytest.raises(ValueError):
            perf_pmu.parse_format(text)


@SETTINGS
@given(words, bit_sets, st.data())
def test_format_overlap_is_refused(word: str, bits: set[int], data: st.DataObject) -> None:
    again = data.draw(st.sampled_from(sorted(bits)))
    runs = bit_ranges(sorted(bits)) + [(again, again)]
    with pytest.raises(ValueError, match="overlapping"):
        perf_pmu.parse_format(format_format(word, runs))


@SETTINGS
@given(st.text(max_size=40))
@example("config:")
@example("config:0-")
@example("config:-1")
@example("config3:0-7")
@example("config:0-7,,8")
@example("config:9" + "9" * 5000)
def test_format_garbage_is_a_value_error(text: str) -> None:
    try:
        word, bits = perf_pmu.parse_format(text)
    except ValueError:
        return
    assert word in CONFIG_WORDS and bits and all(0 <= b <= 63 for b in bits)
    assert list(bits) == sorted(set(bits))


# ---------------------------------------------------------------- events/<event>

@SETTINGS
@given(st.lists(st.tuples(term_names, U64), min_size=1, max_size=6), st.booleans())
def test_event_terms_round_trip(terms: list[tuple[str, int]], bare_one: bool) -> None:
    assert perf_pmu.parse_event_terms(format_event(terms, bare_one)) == terms


@SETTINGS
@given(st.text(max_size=60))
@example("event=?")
@example("event=0x1,,umask=2")
@example("event==1")
@example("event=1=2")
@example("ev ent=1")
@example("event=0x" + "f" * 5000)
def test_event_garbage_is_a_value_error(text: str) -> None:
    try:
        terms = perf_pmu.parse_event_terms(text)
    except ValueError:
        return
    assert terms and all(v >= 0 for _n, v in terms)


@SETTINGS
@given(layouts_and_values())
def test_encode_places_every_value_and_reads_back(case: tuple[Layout, list[tuple[str, int]]]
                                                  ) -> None:
    layout, terms = case
    got = perf_pmu.encode_terms(terms, layout)
    expected = dict.fromkeys(CONFIG_WORDS, 0)
    for name, value in terms:
        word, bits = layout[name]
        expected[word] |= pmu_format_value(bits, value)
        assert extract(got[word], bits) == value
    assert got == expected
    # never silently 0: a non-zero term leaves a non-zero config word
    assert any(got.values()) == any(v for _n, v in terms)


@SETTINGS
@given(layouts(max_terms=1), st.integers(1, 2**70))
def test_value_wider_than_its_format_is_refused(layout: Layout, excess: int) -> None:
    (name, (_word, bits)), = layout.items()
    value = (1 << len(bits)) - 1 + excess
    with pytest.raises(ValueError):
        perf_pmu.encode_terms([(name, value)], layout)


@SETTINGS
@given(st.lists(st.tuples(words, U64), min_size=1, max_size=5), layouts())
def test_config_terms_set_the_word_directly(direct: list[tuple[str, int]],
                                            layout: Layout) -> None:
    got = perf_pmu.encode_terms(direct, layout)
    for word in CONFIG_WORDS:
        expected = 0
        for w, v in direct:
            if w == word:
                expected |= v
        assert got[word] == expected


@SETTINGS
@given(term_names.filter(lambda n: n != "event"), U64, U64)
def test_without_format_dir_only_event_and_config(name: str, value: int, ev: int) -> None:
    assert perf_pmu.encode_terms([("event", ev)], None)["config"] == ev
    with pytest.raises(ValueError, match="format"):
        perf_pmu.encode_terms([(name, value)], None)


# ---------------------------------------------------------------- .scale and .unit

@SETTINGS
@given(scales())
@example(("2.3283064365386962890625e-10", Fraction(1, 2**32)))
@example(("1e-6", Fraction(1, 10**6)))
@example(("64", Fraction(64)))
def test_scale_round_trip_is_exact(case: tuple[str, Fraction]) -> None:
    text, value = case
    assert perf_pmu.parse_scale(text) == value
    assert perf_pmu.parse_scale(text + "\n") == value


@SETTINGS
@given(scales())
def test_zero_and_negative_scales_are_refused(case: tuple[str, Fraction]) -> None:
    text, _value = case
    with pytest.raises(ValueError, match="positive"):
        perf_pmu.parse_scale("-" + text)
    with pytest.raises(ValueError, match="positive"):
        perf_pmu.parse_scale("0" if "e" not in text else "0e" + text.split("e")[1])


@pytest.mark.parametrize("text", ["1e999999999", "1e-999999999", "64e+4000000000",
                                  "0." + "0" * 4000 + "1e-99999999"],
                         ids=["1e999999999", "1e-999999999", "64e+4000000000", "long-0.0001e-"])
def test_huge_exponent_scale_is_refused_in_bounded_time(text: str) -> None:
    """``Fraction("1e999999999")`` computes 10**999999999: minutes of CPU, GBs of RAM.

    Run in a child so that a regression fails (timeout) instead of hanging the suite.
    """
    code = ("import sys\nfrom ceilometer_cmt.backends.perf import pmu as perf_pmu\n"
            "try:\n    perf_pmu.parse_scale(sys.argv[1])\nexcept ValueError:\n"
            "    sys.exit(0)\nsys.exit(3)\n")
    try:
        proc = subprocess.run([sys.executable, "-c", code, text], timeout=20,
                              capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        pytest.fail(f"parse_scale({text[:20]!r}...) still running after 20 s")
    assert proc.returncode == 0, proc.stderr


@SETTINGS
@given(st.text(alphabet="0123456789.eE+-x/_ nai\n", max_size=8) | st.text(max_size=30))
@example("1/3")
@example("1_0")
@example("nan")
@example("inf")
def test_scale_garbage_is_a_value_error_in_bounded_time(text: str) -> None:
    try:
        scale = perf_pmu.parse_scale(text)
    except ValueError:
        return
    assert scale > 0
    # only what the ABI describes: a decimal, maybe in scientific notation
    assert set(text.strip()) <= set("0123456789.eE+-"), text


@SETTINGS
@given(st.sampled_from(sorted(UNITS)), st.sampled_from([str.lower, str.upper, str]),
       st.sampled_from(["", "\n", " "]))
def test_unit_round_trip(unit: str, case: object, tail: str) -> None:
    assert perf_pmu.unit_bytes(case(unit) + tail) == UNITS[unit]  # type: ignore


@SETTINGS
@given(st.text(max_size=12))
@example("Joules")
@example("")
def test_unit_garbage_is_a_value_error(text: str) -> None:
    try:
        n = perf_pmu.unit_bytes(text)
    except ValueError:
        return
    assert n >= 1


# ---------------------------------------------------------------- whole PMU trees

EVENTS = perf_pmu.KNOWN_EVENTS


@st.composite
def pmus(draw: st.DrawFn) -> dict[str, object]:
    """A complete ``intel_cqm`` directory the way a kernel could publish it."""
    layout = draw(layouts())
    events = {}
    for ev in draw(st.lists(st.sampled_from(EVENTS), min_size=1, unique=True)):
        terms = [(n, draw(st.integers(0, 2 ** len(b) - 1))) for n, (_w, b) in layout.items()]
        terms = draw(st.lists(st.sampled_from(terms), min_size=1, unique=True)) if terms \
            else terms
        events[ev] = {
            "terms": terms,
            "scale": draw(st.none() | scales()),
            "unit": draw(st.none() | st.sampled_from(sorted(UNITS))),
            "per-pkg": draw(st.none() | st.booleans()),
            "snapshot": draw(st.none() | st.booleans()),
        }
    return {"type": draw(st.integers(0, 2**32 - 1)), "layout": layout, "events": events}


def write_pmu(root: Path, pmu: dict[str, object]) -> Path:
    base = root / "bus" / "event_source" / "devices" / "intel_cqm"
    (base / "format").mkdir(parents=True)
    (base / "events").mkdir()
    (base / "type").write_text(f"{pmu['type']}\n")
    layout: Layout = pmu["layout"]  # type: ignore[assignment]
    for name, (word, bits) in layout.items():
        (base / "format" / name).write_text(format_format(word, bit_ranges(list(bits))) + "\n")
    events: dict[str, dict[str, object]] = pmu["events"]  # type: ignore[assignment]
    for ev, spec in events.items():
        (base / "events" / ev).write_text(format_event(spec["terms"]) + "\n")  # type: ignore
        if spec["scale"] is not None:
            (base / "events" / f"{ev}.scale").write_text(spec["scale"][0] + "\n")  # type: ignore
        if spec["unit"] is not None:
            (base / "events" / f"{ev}.unit").write_text(f"{spec['unit']}\n")
        for flag in ("per-pkg", "snapshot"):
            if spec[flag] is not None:
                (base / "events" / f"{ev}.{flag}").write_text(f"{int(spec[flag])}\n")  # type: ignore
    return base


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pmus(), st.integers(1, 2**40))
def test_discover_round_trip(pmu: dict[str, object], raw: int) -> None:
    layout: Layout = pmu["layout"]  # type: ignore[assignment]
    events: dict[str, dict[str, object]] = pmu["events"]  # type: ignore[assignment]
    with tempfile.TemporaryDirectory() as tmp:
        write_pmu(Path(tmp), pmu)
        try:
            found = perf_pmu.discover(tmp)
        except PmuMalformed as e:
            # the one refusal: a factor below one byte per count would floor
            # small raw counts to 0 bytes
            assert "byte" in str(e)
            assert any((s["scale"][1] if s["scale"] else 1)  # type: ignore
                       * UNITS[s["unit"] or "Bytes"] < 1  # type: ignore
                       for s in events.values())
            return
    assert found.type == pmu["type"]
    assert set(found.events) == set(events)
    for ev, spec in events.items():
        got = found.events[ev]
        words = dict.fromkeys(CONFIG_WORDS, 0)
        for name, value in spec["terms"]:  # type: ignore[attr-defined]
            word, bits = layout[name]
            words[word] |= pmu_format_value(bits, value)
        assert (got.config, got.config1, got.config2) == tuple(words.values())
        scale = spec["scale"][1] if spec["scale"] else Fraction(1)  # type: ignore
        unit = spec["unit"] or "Bytes"
        assert (got.scale, got.unit) == (scale, unit)
        assert got.per_pkg == bool(spec["per-pkg"]) and got.snapshot == bool(spec["snapshot"])
        assert got.byte_factor == scale * UNITS[unit]  # type: ignore
        # never silently 0, never more than the exact product
        assert 0 < got.to_bytes(raw) <= raw * got.byte_factor
        assert found.spec(ev).type == pmu["type"]


SAMPLE = {"type": 9, "layout": {"event": ("config", tuple(range(8)))},
          "events": {ev: {"terms": [("event", i + 1)], "scale": None, "unit": None,
                          "per-pkg": None, "snapshot": None} for i, ev in enumerate(EVENTS)}}
FILES = ["type", "format/event"] + [f"events/{ev}{sfx}" for ev in EVENTS
                                    for sfx in ("", ".scale", ".unit", ".per-pkg",
                                                ".snapshot")]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FILES), st.binary(max_size=80) | st.text(max_size=80).map(str.encode))
@example("events/llc_occupancy", b"event=0x" + b"0" * 4096 + b"1")
@example("type", b"0" * 4096 + b"7")
def test_any_bytes_in_any_file_fail_only_as_pmu_malformed(rel: str, content: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = write_pmu(Path(tmp), SAMPLE)
        (base / rel).write_bytes(content)
        try:
            found = perf_pmu.discover(tmp)
        except PmuMalformed as e:
            assert rel.split("/")[-1] in str(e) or "none of" in str(e)
            return
    assert found.events
    for ev in found.events.values():
        assert ev.to_bytes(1) >= 1


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 0xFF), st.integers(0, 8000))
def test_leading_zeros_never_lose_the_value(value: int, zeros: int) -> None:
    """A file longer than a sysfs page is refused, never cut to ``event=0x000``."""
    text = f"event=0x{'0' * zeros}{value:x}\n"
    with tempfile.TemporaryDirectory() as tmp:
        base = write_pmu(Path(tmp), SAMPLE)
        (base / "events" / "llc_occupancy").write_text(text)
        if len(text) > 4096:
            with pytest.raises(PmuMalformed, match="llc_occupancy"):
                perf_pmu.discover(tmp)
        else:
            assert perf_pmu.discover(tmp).events["llc_occupancy"].config == value


def test_absent_pmu_is_backend_unavailable_not_malformed() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        with pytest.raises(BackendUnavailable) as e:
            perf_pmu.discover(tmp)
        assert not isinstance(e.value, PmuMalformed)


# ---------------------------------------------------------------- uapi header

UAPI = "/usr/include/linux/perf_event.h"
ATTR_FIELDS = [f[0] for f in abi.PerfEventAttr._fields_ if f[0] != "flags"]
FLAG_BITS = {"disabled": abi.ATTR_DISABLED, "inherit": abi.ATTR_INHERIT,
             "pinned": abi.ATTR_PINNED, "exclusive": abi.ATTR_EXCLUSIVE,
             "exclude_user": abi.ATTR_EXCLUDE_USER, "exclude_kernel": abi.ATTR_EXCLUDE_KERNEL,
             "exclude_hv": abi.ATTR_EXCLUDE_HV, "exclude_idle": abi.ATTR_EXCLUDE_IDLE}
CONSTANTS = ["PERF_TYPE_HARDWARE", "PERF_TYPE_SOFTWARE", "PERF_COUNT_SW_CPU_CLOCK",
             "PERF_COUNT_SW_TASK_CLOCK", "PERF_COUNT_SW_PAGE_FAULTS",
             "PERF_COUNT_SW_CONTEXT_SWITCHES", "PERF_FORMAT_TOTAL_TIME_ENABLED",
             "PERF_FORMAT_TOTAL_TIME_RUNNING", "PERF_FLAG_FD_NO_GROUP", "PERF_FLAG_FD_OUTPUT",
             "PERF_FLAG_PID_CGROUP", "PERF_FLAG_FD_CLOEXEC", "PERF_EVENT_IOC_ENABLE",
             "PERF_EVENT_IOC_DISABLE", "PERF_EVENT_IOC_RESET"] + [
                 f"PERF_ATTR_SIZE_VER{i}" for i in range(8)]


@pytest.fixture(scope="module")
def uapi() -> dict[str, int]:
    """Offsets, sizes and constants as the C compiler reads this machine's header."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or not os.path.exists(UAPI):
        pytest.skip("no C compiler or no linux/perf_event.h (apt-get install gcc linux-libc-dev)")
    lines = ["#include <stdio.h>", "#include <string.h>", "#include <stddef.h>",
             "#include <sys/syscall.h>", "#include <linux/perf_event.h>",
             "int main(void) {", "struct perf_event_attr a; unsigned long long w;",
             'printf("sizeof %zu\\n", sizeof(struct perf_event_attr));',
             'printf("__NR_perf_event_open %ld\\n", (long)__NR_perf_event_open);']
    for f in ATTR_FIELDS:
        if f.startswith("reserved"):
            continue  # named __reserved_* in the header
        lines.append(f'printf("offset.{f} %zu\\n", offsetof(struct perf_event_attr, {f}));')
        lines.append(f'printf("size.{f} %zu\\n", sizeof(a.{f}));')
    for flag in FLAG_BITS:
        lines.append(f"memset(&a, 0, sizeof a); a.{flag} = 1; "
                     "memcpy(&w, (char *)&a + offsetof(struct perf_event_attr, read_format) + 8,"
                     f' 8); printf("flag.{flag} %llu\\n", w);')
    for c in CONSTANTS:
        lines.append(f'printf("{c} %llu\\n", (unsigned long long)({c}));')
    lines.append("return 0; }")
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = os.path.join(tmp, "attr.c"), os.path.join(tmp, "attr")
        with open(src, "w") as cfile:
            cfile.write("\n".join(lines) + "\n")
        subprocess.run([cc, "-o", exe, src], check=True, capture_output=True, timeout=120)
        out = subprocess.run([exe], check=True, capture_output=True, text=True, timeout=30)
    return {k: int(v) for k, v in (line.split() for line in out.stdout.splitlines())}


def test_attr_layout_matches_the_compiled_uapi_header(uapi: dict[str, int]) -> None:
    a = abi.PerfEventAttr
    assert ctypes.sizeof(a) <= uapi["sizeof"]  # newer headers only append fields
    for f in ATTR_FIELDS:
        if f.startswith("reserved"):
            continue
        field = getattr(a, f)
        assert (field.offset, field.size) == (uapi[f"offset.{f}"], uapi[f"size.{f}"]), f
    # the bitfield word sits right after read_format
    assert a.flags.offset == uapi["offset.read_format"] + 8
    assert a.flags.offset + 8 == uapi["offset.wakeup_events"]


def test_attr_flag_bits_match_the_compiled_bitfield(uapi: dict[str, int]) -> None:
    for flag, bit in FLAG_BITS.items():
        assert uapi[f"flag.{flag}"] == bit, flag


def test_constants_match_the_uapi_header(uapi: dict[str, int]) -> None:
    for c in CONSTANTS:
        assert getattr(abi, c) == uapi[c], c
    assert syscall.syscall_number(platform.machine()) == uapi["__NR_perf_event_open"]


@SETTINGS
@given(st.integers(0, 2**32 - 1), U64, U64, U64)
def test_make_attr_carries_every_config_word(type_: int, c0: int, c1: int, c2: int) -> None:
    attr = abi.make_attr(abi.EventSpec(type_, c0, c1, c2))
    raw = bytes(attr)[:attr.size]
    assert int.from_bytes(raw[0:4], sys.byteorder) == type_
    assert int.from_bytes(raw[8:16], sys.byteorder) == c0
    assert int.from_bytes(raw[56:64], sys.byteorder) == c1
    if c2:
        assert attr.size >= abi.PERF_ATTR_SIZE_VER1
        assert int.from_bytes(raw[64:72], sys.byteorder) == c2
