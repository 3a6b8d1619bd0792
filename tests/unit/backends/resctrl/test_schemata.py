"""schemata: the parser, the way count, and the allocation share of instances,
on fixture trees in the kernel's formats."""

from __future__ import annotations

from pathlib import Path

import pytest

from ceilometer_cmt.backends.resctrl import schemata
from ceilometer_cmt.guard import cbm
from ceilometer_cmt.readings import Allocation


def tree(tmp_path: Path, cbm_mask: str | None = "fff", cdp: bool = False,
         groups: dict[str, str] | None = None) -> str:
    root = tmp_path / "resctrl"
    root.mkdir(parents=True)
    if cbm_mask is not None:
        for name in (schemata.L3_CDP if cdp else ("L3",)):
            (root / "info" / name).mkdir(parents=True)
            (root / "info" / name / "cbm_mask").write_text(cbm_mask + "\n")
    for ctrl, text in (groups or {}).items():
        d = root / ctrl if ctrl else root
        d.mkdir(exist_ok=True)
        (d / "schemata").write_text(text)
    return str(root)


def test_the_guard_uses_the_same_parser() -> None:
    assert cbm.parse_schemata is schemata.parse_schemata
    assert cbm.CbmError is schemata.CbmError and cbm.CacheInfo is schemata.CacheInfo


def test_parse_schemata_as_kernels_print_it() -> None:
    # fs/resctrl: "%d=%x", names right-aligned to the widest (CDP-capable)
    assert schemata.parse_schemata("    L3:0=7ff;1=7ff\n    MB:0=100;1=100\n") == {
        "L3": {0: 0x7FF, 1: 0x7FF}}
    # old x86: "%d=%0*x" zero-padded; trailing ';' and 0x tolerated
    assert schemata.parse_schemata("L3:0=00003;1=fffff;\n") == {"L3": {0: 3, 1: 0xFFFFF}}
    assert schemata.parse_schemata("L3:0=0x3\n") == {"L3": {0: 3}}
    # CDP, in either order; SMBA, MB and pseudo-locksetup lines skipped
    text = "L3DATA:0=fffff;1=fffff\nL3CODE:0=3;1=3\n  SMBA:0=2048\nL2:uninitialized\n"
    assert schemata.parse_schemata(text) == {
        "L3DATA": {0: 0xFFFFF, 1: 0xFFFFF}, "L3CODE": {0: 3, 1: 3}}
    for bad in ("L3:0=xyz\n", "L3:0\n", "L3:a=f\n"):
        with pytest.raises(schemata.CbmError, match="bad schemata item"):
            schemata.parse_schemata(bad)


def test_cache_info_rejects_a_mask_that_is_not_all_ways() -> None:
    for bad in (0, 0xF0, 0x5):
        with pytest.raises(schemata.CbmError):
            schemata.CacheInfo(bad)
    with pytest.raises(schemata.CbmError):
        schemata.CacheInfo(0xF, min_cbm_bits=5)
    assert schemata.CacheInfo(0x7FF).cbm_len == 11


def test_share_of_ways() -> None:
    info = schemata.CacheInfo(0x7FF)
    assert schemata.share_percent(info, 0x7) == pytest.approx(300 / 11)
    assert schemata.share_percent(info, 0x7FF) == 100.0
    assert schemata.group_share(info, {"L3": {0: 0x7FF, 1: 0x7}}, 1) == pytest.approx(300 / 11)
    assert schemata.group_share(info, {"L3CODE": {0: 0x7FF}, "L3DATA": {0: 0x3}}, 0) == (
        pytest.approx(200 / 11))
    assert schemata.group_share(info, {"L3": {0: 0x7FF}}, 5) is None


def test_cbm_mask_l3_cdp_and_none(tmp_path: Path) -> None:
    assert schemata.read_cbm_mask(tree(tmp_path / "a", "7ff")) == schemata.CacheInfo(0x7ff)
    assert schemata.read_cbm_mask(tree(tmp_path / "b", "fff", cdp=True)) == \
        schemata.CacheInfo(0xfff)
    assert schemata.read_cbm_mask(tree(tmp_path / "c", None)) is None
    assert schemata.read_cbm_mask(tree(tmp_path / "d", "f0")) is None  # not from bit 0


def test_cache_info_of_a_cdp_host_is_in_l3data(tmp_path: Path) -> None:
    root = tree(tmp_path / "t", None)
    assert schemata.read_cache_info(root) is None  # no CAT
    base = Path(root) / "info" / "L3DATA"
    base.mkdir(parents=True)
    (base / "cbm_mask").write_text("7ff\n")
    # a file missing keeps its default
    assert schemata.read_cache_info(root) == schemata.CacheInfo(0x7ff)
    (base / "min_cbm_bits").write_text("2\n")
    (base / "shareable_bits").write_text("600\n")
    (base / "sparse_masks").write_text("0\n")
    assert schemata.read_cache_info(root) == schemata.CacheInfo(0x7ff, 2, False, 0x600)
    assert schemata.read_cbm_mask(root) == schemata.CacheInfo(0x7ff)  # the mask only
    (base / "min_cbm_bits").write_text("12\n")  # more than the 11 ways
    assert schemata.read_cache_info(root) is None
    (base / "min_cbm_bits").write_text("x\n")
    assert schemata.read_cache_info(root) is None


def test_share_of_the_default_and_a_capped_group(tmp_path: Path) -> None:
    root = tree(tmp_path / "t", "fff", groups={
        "": "L3:0=fff;1=fff\n", "ceilometer-cap-25": "L3:0=007;1=007\n"})
    alloc = schemata.Allocations(root)
    assert alloc.share([""], [0]) == Allocation(100.0, {0: 100.0, 1: 100.0})
    assert alloc.share(["ceilometer-cap-25"], [0]) == Allocation(25.0, {0: 25.0, 1: 25.0})
    # threads in both (a move under way): the ways of either
    assert alloc.share(["ceilometer-cap-25", ""], [0]) == Allocation(100.0, {0: 100.0, 1: 100.0})


def test_smallest_share_where_it_holds_cache(tmp_path: Path) -> None:
    root = tree(tmp_path / "t", "ff", groups={"g": "L3:0=0f;1=03\n"})
    alloc = schemata.Allocations(root)
    assert alloc.share(["g"], [0]) == Allocation(50.0, {0: 50.0, 1: 25.0})
    assert alloc.share(["g"], [0, 1])[0] == 25.0
    assert alloc.share(["g"], [])[0] == 25.0  # holds none: every domain counts


def test_cdp_takes_the_data_mask(tmp_path: Path) -> None:
    root = tree(tmp_path / "t", "ff", cdp=True, groups={"g": "L3CODE:0=ff\nL3DATA:0=0f\n"})
    assert schemata.Allocations(root).share(["g"], [0]) == Allocation(50.0, {0: 50.0})


def test_cap_groups_by_name() -> None:
    assert schemata.cap_share("ceilometer-", "ceilometer-cap-25") == 25
    assert schemata.cap_share("ceilometer-", "ceilometer-cap-100") == 100
    for name in ("ceilometer-cap-0", "ceilometer-cap-101", "other-cap-25", "ceilometer-x",
                 "ceilometer-cap-25x", ""):
        assert schemata.cap_share("ceilometer-", name) is None


def test_no_cat_no_value(tmp_path: Path) -> None:
    root = tree(tmp_path / "t", None, groups={"": "MB:0=100\n"})
    assert schemata.Allocations(root).share([""], [0]) is None
    root = tree(tmp_path / "u", "ff", groups={"": "MB:0=100\n"})
    assert schemata.Allocations(root).share([""], [0]) is None  # no L3 line


def test_each_schemata_read_once_until_refreshed(tmp_path: Path) -> None:
    root = tree(tmp_path / "t", "ff", groups={"": "L3:0=ff\n", "g": "L3:0=0f\n"})
    alloc = schemata.Allocations(root)
    for _ in range(3):
        alloc.share([""], [0])
        alloc.share(["g"], [0])
    assert alloc.reads == 2
    Path(root, "g", "schemata").write_text("L3:0=03\n")
    assert alloc.share(["g"], [0])[0] == 50.0  # not read again yet
    alloc.refresh()
    assert alloc.share(["g"], [0])[0] == 25.0
    assert alloc.reads == 3
