"""The daemon's rules for the guard's CAT requests: names, lines, CLOSIDs, origins."""

from __future__ import annotations

import errno

import pytest

from ceilometer_cmt.guard import cbm
from ceilometer_cmt.privsep import cat_rules
from ceilometer_cmt.privsep.cat_rules import (
    check_cap_group,
    check_closids,
    check_origins,
    check_schemata_line,
    check_schemata_lines,
)

PREFIX = "ceilometer-"
INFOS = {"L3": cbm.CacheInfo(0xfff, min_cbm_bits=2)}
DEFAULT: cbm.Schemata = {"L3": {0: 0xfff, 1: 0xfff}}
CDP_INFOS = {n: cbm.CacheInfo(0xfff) for n in cbm.L3_CDP}
CDP_DEFAULT: cbm.Schemata = {"L3CODE": {0: 0xfff}, "L3DATA": {0: 0xfff}}


@pytest.mark.parametrize("share", [1, 9, 10, 25, 99, 100])
def test_cap_groups_are_ours(share: int) -> None:
    assert check_cap_group(f"{PREFIX}cap-{share}", PREFIX) == f"{PREFIX}cap-{share}"


@pytest.mark.parametrize("name", ["", "info", "..", "cap-25", f"{PREFIX}cap-0",
                                  f"{PREFIX}cap-101", f"{PREFIX}cap-07", f"{PREFIX}cap-25\n",
                                  f"{PREFIX}cap-25/tasks", f"x{PREFIX}cap-25",
                                  "qemu-3-instance-x-vcpus_0", 25, None, b"ceilometer-cap-25"])
def test_other_names_are_refused(name: object) -> None:
    with pytest.raises(PermissionError, match="rule cap-groups"):
        check_cap_group(name, PREFIX)


def test_a_prefix_the_guard_cannot_use_makes_nothing_ours() -> None:
    with pytest.raises(PermissionError):
        check_cap_group("cap-25", "")


@pytest.mark.parametrize(("line", "text"), [
    ("L3:0=3\n", "L3:0=3\n"),
    ("L3:0=3", "L3:0=3\n"),
    ("  L3:1=0x0F0;0=00c;\n", "L3:0=c;1=f0\n"),  # the kernel's padding, 0x, a trailing ;
    ("L3:0=fff\n", "L3:0=fff\n"),
])
def test_lines_become_the_daemons_own_text(line: str, text: str) -> None:
    assert check_schemata_line(line, INFOS, DEFAULT) == text


@pytest.mark.parametrize(("line", "why"), [
    ("L3:0=5\n", "non-consecutive"),
    ("L3:0=1000\n", "Mask out of range"),
    ("L3:0=0\n", "Mask out of range"),
    ("L3:0=1\n", "Need at least 2 bits"),
    ("L3:2=3\n", "unknown L3 domain 2"),
    ("L3:0=3;0=3\n", "Duplicate domain 0"),
    ("MB:0=100\n", "only L3 cache allocation"),
    ("L2:0=3\n", "only L3 cache allocation"),
    ("L3CODE:0=3\n", "no L3CODE schemata"),
    ("L3:0=3\nL3:1=3\n", "one schemata line per write"),
    ("L3:0=3\r\n", "one schemata line per write"),
    ("L3:0=3\x00\n", "NUL"),
    ("L3:0=3é\n", "NUL or other unprintable"),
    ("L3 0=3\n", "no ':'"),
    ("L3:\n", "without a domain"),
    ("L3: 0=3\n", "not '<domain id>=<hex mask>'"),
    ("L3:0=g\n", "not '<domain id>=<hex mask>'"),
    ("L3:0\n", "not '<domain id>=<hex mask>'"),
    ("L3:-1=3\n", "not '<domain id>=<hex mask>'"),
    ("L3:0=" + "f" * 17 + "\n", "not '<domain id>=<hex mask>'"),
    ("L3:" + "0=3;" * 3000 + "\n", "at most"),
])
def test_bad_lines_are_refused_with_the_reason(line: str, why: str) -> None:
    with pytest.raises(OSError, match="rule schemata") as e:
        check_schemata_line(line, INFOS, DEFAULT)
    assert e.value.errno == errno.EINVAL
    assert why in str(e.value)


def test_sparse_masks_when_the_host_has_them() -> None:
    sparse = {"L3": cbm.CacheInfo(0xfff, sparse_masks=True)}
    assert check_schemata_line("L3:0=5\n", sparse, DEFAULT) == "L3:0=5\n"


def test_no_way_outside_the_default_groups_mask() -> None:
    """Ways the default group does not hold are libvirt's free ways."""
    default: cbm.Schemata = {"L3": {0: 0x0ff, 1: 0xfff}}
    assert check_schemata_line("L3:0=3;1=f00\n", INFOS, default) == "L3:0=3;1=f00\n"
    with pytest.raises(OSError, match="does not hold"):
        check_schemata_line("L3:0=f00\n", INFOS, default)


def test_cdp_lines() -> None:
    assert check_schemata_line("L3DATA:0=ff\n", CDP_INFOS, CDP_DEFAULT) == "L3DATA:0=ff\n"
    with pytest.raises(OSError, match="no L3 schemata"):
        check_schemata_line("L3:0=ff\n", CDP_INFOS, CDP_DEFAULT)


@pytest.mark.parametrize("lines", [[], ["L3:0=3\n"] * 5, "L3:0=3\n", None, [b"L3:0=3\n"]])
def test_line_lists_are_bounded(lines: object) -> None:
    with pytest.raises(OSError, match="rule schemata"):
        check_schemata_lines(lines, INFOS, DEFAULT)


def test_what_the_guard_writes_passes() -> None:
    """cap_schemata's own output, line by line, is taken as it is."""
    text = cbm.format_schemata(cbm.cap_schemata(INFOS["L3"], 25, DEFAULT))
    assert check_schemata_lines(text.splitlines(keepends=True), INFOS, DEFAULT) == [text]


@pytest.mark.parametrize(("num", "in_use", "option", "ok"), [
    (16, 0, -1, True), (16, 6, -1, True), (16, 7, -1, False),  # 8 kept
    (4, 0, -1, True), (4, 1, -1, False),  # Haswell: 4 CLOSIDs, 2 kept
    (16, 14, 0, True), (16, 15, 0, False),  # 0 keeps none: the last CLOSID may go
    (16, 0, 15, False),
])
def test_the_closid_reserve(num: int, in_use: int, option: int, ok: bool) -> None:
    if ok:
        check_closids(num, in_use, option)
        return
    with pytest.raises(OSError, match=r"\[cmt_privsep\] closid_reserve") as e:
        check_closids(num, in_use, option)
    assert e.value.errno == errno.ENOSPC


def test_the_default_reserve_is_the_guards() -> None:
    assert cat_rules.closid_reserve(-1, 16) == 8
    assert cat_rules.closid_reserve(3, 16) == 3


MEMBERS = {f"{PREFIX}cap-25": {10, 11}, "qemu-3-instance-x-vcpus_0": {12}, "pqos-x": {13}}


def test_threads_come_from_the_default_group_or_a_cap_group() -> None:
    assert check_origins([10, 11, 20], MEMBERS, PREFIX) == {20}


@pytest.mark.parametrize("tid", [12, 13])
def test_threads_of_another_control_group_stay(tid: int) -> None:
    with pytest.raises(PermissionError, match="rule cap-threads"):
        check_origins([10, tid], MEMBERS, PREFIX)
