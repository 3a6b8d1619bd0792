"""The guard's cache bit masks: cap masks for odd cbm_masks and
min_cbm_bits, schemata lines (CDP too) that read back as written.  Parsing
the kernel's schemata and the share a mask gives are schemata.py's
(tests/unit/backends/resctrl/test_schemata.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ceilometer_cmt.guard.cbm import (
    CacheInfo,
    CbmError,
    cap_mask,
    cap_schemata,
    cap_ways,
    first_run,
    format_schemata,
    is_contiguous,
    parse_schemata,
    validate,
)


def test_cap_ways_round_half_up_within_bounds() -> None:
    assert cap_ways(CacheInfo(0xFFFFF), 25) == 5  # 20 ways
    assert cap_ways(CacheInfo(0x7FF), 25) == 3  # 11 ways: 2.75 -> 3
    assert cap_ways(CacheInfo(0x7FF), 10) == 1  # 1.1 -> 1
    assert cap_ways(CacheInfo(0xFFF), 12.5) == 2  # 1.5 -> 2 (half up)
    assert cap_ways(CacheInfo(0xFFFFF, min_cbm_bits=2), 5) == 2  # Haswell: >= 2 bits
    assert cap_ways(CacheInfo(0xFFFF, min_cbm_bits=0), 1) == 1  # never an empty mask
    assert cap_ways(CacheInfo(0xF), 100) == 4
    for bad in (0, -5, 101):
        with pytest.raises(CbmError):
            cap_ways(CacheInfo(0xFF), bad)


def test_cap_mask_takes_the_lowest_ways_of_the_default_group() -> None:
    assert cap_mask(CacheInfo(0xFFFFF), 25) == 0x1F
    assert cap_mask(CacheInfo(0x7FF), 25) == 0x7
    # the default group was shrunk (ways freed for libvirt): stay inside it
    assert cap_mask(CacheInfo(0xFFFFF), 25, default_mask=0xFFC00) == 0x7C00
    # avoid the ways hardware shares with I/O when there is room
    haswell = CacheInfo(0xFFFFF, min_cbm_bits=2, shareable_bits=0xC0000)
    assert cap_mask(haswell, 25, default_mask=0xF8000) == 0xF8000  # only window: overlaps
    assert cap_mask(haswell, 10, default_mask=0xF8000) == 0x18000
    assert not cap_mask(haswell, 25) & haswell.shareable_bits


def test_cap_mask_on_mpam_where_hardware_shares_every_portion() -> None:
    """MPAM's shareable_bits is every portion (doc/kernel-facts-mpam.md): no
    window avoids it, so the cap takes the lowest one; the padded ``%x``
    line of such a host reads back (the name stripped)."""
    mpam = CacheInfo(0xFFFF, min_cbm_bits=1, sparse_masks=True, shareable_bits=0xFFFF)
    assert cap_mask(mpam, 25) == 0xF
    default = parse_schemata("    L3:0=ffff;1=ffff\n")
    assert cap_schemata(mpam, 25, default) == {"L3": {0: 0xF, 1: 0xF}}
    assert validate(mpam, 0x8001) is None  # sparse masks allowed


def test_cap_mask_when_the_default_group_is_small() -> None:
    # the default group holds 3 ways in a run: the cap gets that run
    assert cap_mask(CacheInfo(0xFFFFF), 50, default_mask=0x70) == 0x70
    # one way left, but the hardware needs two
    with pytest.raises(CbmError, match="no run of 2 ways"):
        cap_mask(CacheInfo(0xFFFFF, min_cbm_bits=2), 25, default_mask=0x1)


def test_validate_speaks_as_cbm_validate() -> None:
    info = CacheInfo(0xFFFFF, min_cbm_bits=2)
    assert validate(info, 0x3) is None
    assert validate(info, 0) == "Mask out of range\n"
    assert validate(info, 0x100000) == "Mask out of range\n"
    assert validate(info, 0xF7) == "The mask f7 has non-consecutive 1-bits\n"
    assert validate(info, 0x1) == "Need at least 2 bits in the mask\n"
    amd = CacheInfo(0xFFFF, min_cbm_bits=0, sparse_masks=True)
    assert validate(amd, 0) is None
    assert validate(amd, 0xF0F) is None
    # sparse: the *first* run counts for min_cbm_bits
    assert validate(CacheInfo(0xFF, min_cbm_bits=2, sparse_masks=True), 0x71) == (
        "Need at least 2 bits in the mask\n")


def test_schemata_lines_and_cdp() -> None:
    info = CacheInfo(0x7FF)
    plain = cap_schemata(info, 25, {"L3": {0: 0x7FF, 1: 0x7FF}, "MB": {0: 100}})
    assert format_schemata(plain) == "L3:0=7;1=7\n"
    cdp = cap_schemata(info, 25, {"L3DATA": {0: 0x7FF, 1: 0x7F0}, "L3CODE": {1: 0x7FF,
                                                                               0: 0x7FF}})
    assert format_schemata(cdp) == "L3CODE:0=7;1=7\nL3DATA:0=7;1=70\n"
    with pytest.raises(CbmError):
        cap_schemata(info, 25, {"MB": {0: 100}})
    assert format_schemata({"L3": {}}) == ""


def test_run_helpers() -> None:
    assert first_run(0) == 0
    assert first_run(0b11101100) == 2
    assert is_contiguous(0b111000)
    assert not is_contiguous(0b101)
    assert not is_contiguous(0)


# ------------------------------------------------------------- properties


@st.composite
def hosts(draw: st.DrawFn) -> tuple[CacheInfo, int]:
    """A cache (1..32 ways, min_cbm_bits, shareable bits) and a default
    group mask with at least one run of min_cbm_bits ways."""
    n = draw(st.integers(1, 32))
    min_bits = draw(st.integers(0, min(4, n)))
    full = (1 << n) - 1
    shareable = draw(st.integers(0, full))
    info = CacheInfo(full, min_bits, draw(st.booleans()), shareable)
    run = draw(st.integers(max(1, min_bits), n))
    start = draw(st.integers(0, n - run))
    extra = draw(st.integers(0, full))
    return info, (((1 << run) - 1) << start) | extra


@given(hosts(), st.floats(min_value=0.5, max_value=100))
def test_cap_mask_is_always_valid(host: tuple[CacheInfo, int], share: float) -> None:
    info, default = host
    for within in (None, default):
        mask = cap_mask(info, share, within)
        assert is_contiguous(mask)
        assert mask & ~info.cbm_mask == 0
        assert first_run(mask) >= max(1, info.min_cbm_bits)
        assert validate(info, mask) is None
        if within is not None:
            assert mask & ~within == 0  # no way outside the default group's
        assert format_schemata({"L3": {0: mask}}) == f"L3:0={mask:x}\n"
        assert parse_schemata(format_schemata({"L3": {0: mask}})) == {"L3": {0: mask}}
