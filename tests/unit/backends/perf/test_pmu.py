"""Discovery of the intel_cqm PMU on fixture sysfs trees (present, absent, malformed)."""

from __future__ import annotations

import os
import shutil
from fractions import Fraction
from pathlib import Path

import pytest

from ceilometer_cmt.backends.perf import pmu as perf_pmu
from ceilometer_cmt.backends.perf.pmu import PmuMalformed
from ceilometer_cmt.errors import BackendUnavailable
from tests.support import paths

FIXTURES = paths.PERF_FIXTURES
BROADWELL = FIXTURES / "cqm-broadwell"
SOFTWARE = FIXTURES / "software"
REL = Path("bus/event_source/devices/intel_cqm")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A writable copy of the Broadwell-shaped tree; returns the PMU directory."""
    shutil.copytree(BROADWELL, tmp_path / "sys")
    return tmp_path / "sys" / REL


def sysroot(pmu: Path) -> str:
    return str(pmu.parents[3])


# ---------------------------------------------------------------- present

def test_broadwell_tree_as_cqm_c_registers_it() -> None:
    pmu = perf_pmu.discover(str(BROADWELL))
    assert pmu.type == 9
    assert pmu.path.endswith("bus/event_source/devices/intel_cqm")
    occ = pmu.events["llc_occupancy"]
    assert (occ.config, occ.config1, occ.config2) == (0x01, 0, 0)
    assert occ.scale == 64 and occ.unit == "Bytes"
    assert occ.per_pkg and occ.snapshot
    assert occ.byte_factor == 64 and occ.to_bytes(10) == 640
    tot, loc = pmu.events["total_bytes"], pmu.events["local_bytes"]
    assert (tot.config, loc.config) == (0x02, 0x03)
    assert tot.scale == Fraction(1, 10**6) and tot.unit == "MB"
    assert tot.byte_factor == 1 and loc.byte_factor == 1  # raw MBM counts are bytes
    assert not tot.snapshot
    spec = pmu.spec("llc_occupancy")
    assert (spec.type, spec.config) == (9, 1)


def test_software_stand_in_tree() -> None:
    pmu = perf_pmu.discover(str(SOFTWARE))
    assert pmu.type == 1
    assert {n: e.config for n, e in pmu.events.items()} == {
        "llc_occupancy": 1, "total_bytes": 2, "local_bytes": 3}


def test_config_comes_from_the_format_not_a_constant(tree: Path) -> None:
    (tree / "format" / "event").write_text("config:8-15\n")
    (tree / "format" / "umask").write_text("config1:0-3,8-11\n")
    (tree / "events" / "llc_occupancy").write_text("event=0x01,umask=0xab\n")
    pmu = perf_pmu.discover(sysroot(tree))
    occ = pmu.events["llc_occupancy"]
    assert occ.config == 0x100
    assert occ.config1 == 0xa0b
    assert pmu.events["total_bytes"].config == 0x200


def test_type_and_event_values_are_read_not_assumed(tree: Path) -> None:
    (tree / "type").write_text("42\n")
    (tree / "events" / "llc_occupancy").write_text("event=7\n")
    (tree / "events" / "llc_occupancy.scale").write_text("128\n")
    pmu = perf_pmu.discover(sysroot(tree))
    assert pmu.type == 42
    assert pmu.events["llc_occupancy"].config == 7
    assert pmu.events["llc_occupancy"].byte_factor == 128


def test_without_format_dir_event_is_the_config(tree: Path) -> None:
    shutil.rmtree(tree / "format")
    (tree / "events" / "total_bytes").write_text("event=0x1234")
    pmu = perf_pmu.discover(sysroot(tree))
    assert pmu.events["total_bytes"].config == 0x1234
    (tree / "events" / "total_bytes").write_text("event=2,umask=1")
    with pytest.raises(PmuMalformed, match="without a format"):
        perf_pmu.discover(sysroot(tree))


def test_cmt_only_and_mbm_only_cpus(tree: Path) -> None:
    for name in ("total_bytes", "local_bytes"):
        for f in (tree / "events").glob(name + "*"):
            f.unlink()
    assert set(perf_pmu.discover(sysroot(tree)).events) == {"llc_occupancy"}
    for f in (tree / "events").glob("llc_occupancy*"):
        f.unlink()
    with pytest.raises(PmuMalformed, match="none of"):
        perf_pmu.discover(sysroot(tree))


def test_mbm_only_cpu(tree: Path) -> None:
    for f in (tree / "events").glob("llc_occupancy*"):
        f.unlink()
    assert set(perf_pmu.discover(sysroot(tree)).events) == {"total_bytes", "local_bytes"}


def test_defaults_when_scale_and_unit_files_are_missing(tree: Path) -> None:
    for suffix in (".scale", ".unit", ".per-pkg", ".snapshot"):
        (tree / "events" / ("llc_occupancy" + suffix)).unlink()
    occ = perf_pmu.discover(sysroot(tree)).events["llc_occupancy"]
    assert (occ.scale, occ.unit, occ.per_pkg, occ.snapshot) == (1, "Bytes", False, False)


# ---------------------------------------------------------------- absent

def test_absent_pmu_says_removed_in_4_14_and_points_to_resctrl(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable) as e:
        perf_pmu.discover(str(tmp_path))
    msg = str(e.value)
    assert "intel_cqm" in msg and "4.14" in msg and "resctrl" in msg
    assert not isinstance(e.value, PmuMalformed)


def test_this_hosts_real_sysfs() -> None:
    """No kernel after 4.13 has the PMU; on those discovery must say so."""
    if os.path.isdir(perf_pmu.pmu_dir("/sys")):
        pmu = perf_pmu.discover("/sys")
        assert pmu.events
    else:
        with pytest.raises(BackendUnavailable, match="4.14"):
            perf_pmu.discover("/sys")


# ---------------------------------------------------------------- malformed

@pytest.mark.parametrize("path, text, match", [
    ("type", "nine\n", "type"),
    ("type", "", "type"),
    ("type", "4294967296", "out of range"),
    ("events/llc_occupancy", "event=zz", "llc_occupancy"),
    ("events/llc_occupancy", "event=", "llc_occupancy"),
    ("events/llc_occupancy", "", "empty"),
    ("events/llc_occupancy", "event=0x100", "does not fit"),
    ("events/llc_occupancy", "event=1,chan=2", "no format/chan"),
    ("events/llc_occupancy", "event=?", "parameter"),
    ("events/llc_occupancy", "1event=1", "bad term"),
    ("events/llc_occupancy.scale", "abc", "scale"),
    ("events/llc_occupancy.scale", "0", "positive"),
    ("events/llc_occupancy.scale", "-64", "positive"),
    ("events/llc_occupancy.unit", "Joules", "unit"),
    ("events/total_bytes.per-pkg", "yes", "per-pkg"),
    ("format/event", "config:7-0", "format"),
    ("format/event", "config3:0-7", "format"),
    ("format/event", "config:0-64", "format"),
    ("format/event", "config:0-7,3", "overlapping"),
    ("format/event", "event", "format"),
])
def test_malformed_files_are_named(tree: Path, path: str, text: str, match: str) -> None:
    (tree / path).write_text(text)
    with pytest.raises(PmuMalformed, match=match) as e:
        perf_pmu.discover(sysroot(tree))
    assert isinstance(e.value, BackendUnavailable)


def test_missing_type_file(tree: Path) -> None:
    (tree / "type").unlink()
    with pytest.raises(PmuMalformed, match="missing"):
        perf_pmu.discover(sysroot(tree))


def test_binary_garbage(tree: Path) -> None:
    (tree / "events" / "llc_occupancy").write_bytes(b"\xff\xfe")
    with pytest.raises(PmuMalformed):
        perf_pmu.discover(sysroot(tree))


# ---------------------------------------------------------------- pure parsers

def test_parse_event_terms() -> None:
    assert perf_pmu.parse_event_terms("event=0x01") == [("event", 1)]
    assert perf_pmu.parse_event_terms(" event=0x3c, umask=12 ,edge\n") == [
        ("event", 0x3C), ("umask", 12), ("edge", 1)]
    for bad in ("", "event=0x", "event=1,,", "=1", "event=-1", "event=1.5"):
        with pytest.raises(ValueError):
            perf_pmu.parse_event_terms(bad)


def test_parse_format() -> None:
    assert perf_pmu.parse_format("config:0-7") == ("config", tuple(range(8)))
    assert perf_pmu.parse_format("config1:3") == ("config1", (3,))
    assert perf_pmu.parse_format("config2:0-1,62-63") == ("config2", (0, 1, 62, 63))


def test_encode_term_full_width_and_direct_config() -> None:
    fmt = {"event": perf_pmu.parse_format("config:0-63")}
    assert perf_pmu.encode_terms([("event", 2**64 - 1)], fmt)["config"] == 2**64 - 1
    words = perf_pmu.encode_terms([("config", 5), ("config2", 9)], fmt)
    assert (words["config"], words["config2"]) == (5, 9)


def test_real_pmus_of_this_host_parse() -> None:
    """The parsers on whatever PMUs this kernel really publishes (msr, power, ...)."""
    base = "/sys/bus/event_source/devices"
    checked = 0
    for name in sorted(os.listdir(base)):
        pmu = os.path.join(base, name)
        formats = perf_pmu.read_formats(pmu)
        try:
            events = sorted(e for e in os.listdir(os.path.join(pmu, "events")) if "." not in e)
        except FileNotFoundError:
            continue
        for ev in events:
            try:
                found = perf_pmu.read_event(pmu, ev, formats)
            except PmuMalformed as e:
                if "parameter" in str(e):  # e.g. tracepoint-style "?" terms
                    continue
                raise
            assert found is not None and found.scale > 0
            checked += 1
    if checked == 0:
        pytest.skip("this kernel publishes no PMU events in sysfs")


def test_exact_scale_of_real_power_pmu_shape() -> None:
    assert perf_pmu.parse_scale("2.3283064365386962890625e-10") == Fraction(1, 2**32)
    assert perf_pmu.parse_scale("1e-6") * perf_pmu.unit_bytes("MB") == 1
