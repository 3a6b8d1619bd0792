"""The simulator's schemata and mode parsers against the kernel's
(fs/resctrl/ctrlmondata.c ``rdtgroup_schemata_write``, ``parse_line``,
``cbm_validate``; rdtgroup.c ``__init_one_rdt_domain``,
``rdtgroup_mode_write``; doc/kernel-facts-cat.md)."""

from __future__ import annotations

import errno
from dataclasses import replace

import pytest

from ceilometer_cmt.simulator.errors import SimError
from ceilometer_cmt.simulator.groups import Group
from ceilometer_cmt.simulator.topology import get_topology
from ceilometer_cmt.simulator.writes import (
    first_run,
    initial_schemata,
    parse_cbm,
    parse_mode,
    parse_schemata,
)

INTEL = get_topology("intel-2s")  # 20 ways, L3 ids 0 and 1


def ctrl(name: str, closid: int, mask: int, mode: str = "shareable") -> Group:
    return Group(name, "ctrl", None, closid, closid, mode=mode, schemata={0: mask, 1: mask})


def rejected(fn: object, *args: object) -> tuple[int, str | None]:
    with pytest.raises(SimError) as e:
        fn(*args)  # type: ignore[operator]
    return e.value.errno, e.value.status


def test_what_the_kernel_accepts() -> None:
    g = ctrl("g", 1, 0xFFFFF)
    assert parse_schemata(INTEL, g, b"L3:0=f;1=f0\n") == {0: 0xF, 1: 0xF0}
    assert parse_schemata(INTEL, g, b"  L3 :0= 0x3 ;\n") == {0: 3}  # name, value strim'd
    assert parse_schemata(INTEL, g, b"L3:0=+3\n") == {0: 3}  # kstrtoul takes '+'
    assert parse_schemata(INTEL, g, b"L3:1=0003f\n") == {1: 0x3F}  # old kernels' padding
    assert parse_schemata(INTEL, g, b"L3:0=f\nL3:1=f\n") == {0: 0xF, 1: 0xF}


def test_what_the_kernel_rejects_and_says() -> None:
    g = ctrl("g", 1, 0xFFFFF)
    cases = {
        b"L3: 0=f\n": "Missing '=' or non-numeric domain\n",  # the id is not trimmed
        b"L3:0 =f\n": "Missing '=' or non-numeric domain\n",
        b"L3:0f\n": "Missing '=' or non-numeric domain\n",
        b"L3:;\n": "Missing '=' or non-numeric domain\n",
        b"L3:0=\n": "Non-hex character in the mask \n",
        b"L3:0=0x\n": "Non-hex character in the mask 0x\n",
        b"L3:0=1" + b"0" * 20 + b"\n": "Non-hex character in the mask 1" + "0" * 20 + "\n",
        b"L3:0=f\n\n": "Missing ':'\n",  # an empty line
        b"L3:\n": "Missing 'L3' value\n",
        b" MB :0=50\n": "Unknown or unsupported resource name 'MB'\n",
        b"L3CODE:0=f\n": "Unknown or unsupported resource name 'L3CODE'\n",  # no CDP
        b"L3:0=f;0=f\n": "Duplicate domain 0\n",
    }
    for data, status in cases.items():
        assert rejected(parse_schemata, INTEL, g, data) == (errno.EINVAL, status), data
    # a domain that does not exist: EINVAL and no text at all
    assert rejected(parse_schemata, INTEL, g, b"L3:7=f\n") == (errno.EINVAL, "")
    # a CLOSID beyond num_closids sees no L3 schema
    far = ctrl("far", 16, 0xFFFFF)
    assert rejected(parse_schemata, INTEL, far, b"L3:0=f\n")[1] == (
        "Unknown or unsupported resource name 'L3'\n")


def test_cbm_validate_order_and_texts() -> None:
    haswell = replace(INTEL, min_cbm_bits=2)
    assert parse_cbm(haswell, "3") == 3
    assert rejected(parse_cbm, haswell, "0")[1] == "Mask out of range\n"
    assert rejected(parse_cbm, haswell, "100000")[1] == "Mask out of range\n"
    assert rejected(parse_cbm, haswell, "f7")[1] == "The mask f7 has non-consecutive 1-bits\n"
    assert rejected(parse_cbm, haswell, "1")[1] == "Need at least 2 bits in the mask\n"
    amd = get_topology("amd-ccx")  # min_cbm_bits 0, sparse masks
    assert parse_cbm(amd, "0") == 0
    assert parse_cbm(amd, "f0f") == 0xF0F
    sparse2 = replace(amd, min_cbm_bits=2)
    assert rejected(parse_cbm, sparse2, "71")[1] == "Need at least 2 bits in the mask\n"
    assert rejected(parse_cbm, sparse2, "c1")[1] == "Need at least 2 bits in the mask\n"
    odd = replace(INTEL, cbm_len=11)  # cbm_mask 7ff
    assert parse_cbm(odd, "7ff") == 0x7FF
    assert rejected(parse_cbm, odd, "fff")[1] == "Mask out of range\n"


def test_exclusive_groups_and_overlaps() -> None:
    root = ctrl("", 0, 0xFFF00)
    excl = ctrl("e", 1, 0xFF, mode="exclusive")
    g = ctrl("g", 2, 0xFFF00)
    groups = [root, excl, g]
    assert rejected(parse_schemata, INTEL, g, b"L3:0=1ff\n", groups)[1] == (
        "Overlaps with exclusive group\n")
    assert parse_schemata(INTEL, g, b"L3:0=f00\n", groups) == {0: 0xF00}
    assert rejected(parse_schemata, INTEL, excl, b"L3:0=1ff\n", groups)[1] == (
        "Overlaps with other group\n")
    assert parse_schemata(INTEL, excl, b"L3:0=f\n", groups) == {0: 0xF}
    # becoming exclusive: the default group counts too
    assert rejected(parse_mode, INTEL, g, b"exclusive\n", groups)[1] == "Schemata overlaps\n"
    assert parse_mode(INTEL, excl, b"exclusive\n", groups) == "exclusive"
    assert parse_mode(INTEL, g, b"shareable\n", groups) == "shareable"
    assert rejected(parse_mode, INTEL, g, b"locked\n", groups)[1] == "Unknown or unsupported mode\n"


def test_a_new_group_gets_the_first_free_run() -> None:
    assert first_run(0) == 0
    assert first_run(0b1101100) == 0b1100
    assert first_run(0xFFFFF) == 0xFFFFF
    root = ctrl("", 0, 0xFFFFF)
    assert initial_schemata(INTEL, [root]) == {0: 0xFFFFF, 1: 0xFFFFF}
    # an exclusive group in the middle: only the run below it is given
    middle = ctrl("e", 1, 0xFF00, mode="exclusive")
    root.schemata = {0: 0xF00FF, 1: 0xF00FF}
    assert initial_schemata(INTEL, [root, middle]) == {0: 0xFF, 1: 0xFF}
    # fewer than min_cbm_bits ways left: ENOSPC, "No space on L3:<id>"
    low = ctrl("e", 1, 0xFFFFE, mode="exclusive")
    haswell = replace(INTEL, min_cbm_bits=2)
    assert rejected(initial_schemata, haswell, [low]) == (errno.ENOSPC, "No space on L3:0\n")


def test_mpam_shares_every_way_with_hardware_so_no_group_is_exclusive() -> None:
    """MPAM's ``shareable_bits`` is every portion (mpam_resctrl_control_init():
    "Unknown devices use partid-0 which uses all the bitmap fields"), and
    ``__rdtgroup_cbm_overlaps()`` checks it before the groups: no mask, however
    small and alone, can be exclusive; a new group still gets every way."""
    mpam = get_topology("arm64-mpam")
    root = ctrl("", 0, 0xFFFF)
    alone = ctrl("a", 1, 0x1)
    assert rejected(parse_mode, mpam, alone, b"exclusive\n", [root, alone])[1] == (
        "Schemata overlaps\n")
    assert parse_mode(INTEL, alone, b"exclusive\n", [alone]) == "exclusive"
    assert initial_schemata(mpam, [root]) == {0: 0xFFFF, 1: 0xFFFF}
    # sparse masks, one bit at least (min_cbm_bits 1)
    assert parse_schemata(mpam, alone, b"L3:0=8001;1=1\n", [root, alone]) == {0: 0x8001, 1: 1}
    assert rejected(parse_schemata, mpam, alone, b"L3:0=0\n", [root, alone])[1] == (
        "Mask out of range\n")
