"""The MBM counter reserve as plain functions: what a request would cost in
each domain, what is refused, and what a mkdir gives back."""

from __future__ import annotations

import errno
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ceilometer_cmt.privsep import rules
from ceilometer_cmt.privsep.counter_reserve import (
    MIN_COUNTER_RESERVE,
    RULE,
    check_counter_reserve,
    counter_reserve,
    counters_past_reserve,
)

NONE = {"mbm_total_bytes": {0: False, 1: False}, "mbm_local_bytes": {0: False, 1: False}}
BOTH = {"mbm_total_bytes": {0: True, 1: True}, "mbm_local_bytes": {0: True, 1: True}}
KEEP2 = {0: 2, 1: 2}


def _refused(lines: list[str], available: dict[int, int] | None,
             assigned: dict[str, dict[int, bool]] | None,
             reserve: dict[int, int] = KEEP2) -> OSError:
    with pytest.raises(OSError, match=f"rule {RULE}: ") as e:
        check_counter_reserve(lines, available, assigned, reserve)
    return e.value


def test_the_default_reserve_is_an_eighth_of_the_counters_at_least_two() -> None:
    assert counter_reserve(-1, {0: 32, 1: 32}, [0, 1]) == {0: 4, 1: 4}
    assert counter_reserve(-1, {0: 8, 1: 8}, [0, 1]) == {0: 2, 1: 2}
    assert counter_reserve(-1, {0: 256}, [0]) == {0: 32}
    # num_mbm_cntrs unreadable, or a domain it does not list: the minimum
    assert counter_reserve(-1, None, [0, 3]) == {0: MIN_COUNTER_RESERVE, 3: MIN_COUNTER_RESERVE}
    assert counter_reserve(-1, {0: 32}, [0, 1]) == {0: 4, 1: 2}
    # set by the operator: that, in every domain, 0 included
    assert counter_reserve(0, {0: 32}, [0, 1]) == {0: 0, 1: 0}
    assert counter_reserve(7, None, [0]) == {0: 7}


def test_assignments_that_leave_the_reserve_free_pass() -> None:
    check_counter_reserve(["mbm_total_bytes:0=e;1=e\n"], {0: 3, 1: 3}, NONE, KEEP2)
    check_counter_reserve(["mbm_total_bytes:*=e\n"], {0: 3, 1: 3}, NONE, KEEP2)
    check_counter_reserve(["mbm_local_bytes:1=e\n"], {0: 0, 1: 3}, NONE, KEEP2)
    check_counter_reserve(["mbm_total_bytes:0=e\n"], {0: 1}, NONE, {0: 0})
    # no reserve: the kernel alone answers ENOSPC when none is free
    check_counter_reserve(["mbm_total_bytes:*=e\n"], {0: 0, 1: 0}, NONE, {0: 0, 1: 0})


@pytest.mark.parametrize("lines, available", [
    (["mbm_total_bytes:0=e\n"], {0: 2, 1: 9}),
    (["mbm_total_bytes:1=e\n"], {0: 9, 1: 2}),
    (["mbm_total_bytes:0=e;1=e\n"], {0: 3, 1: 2}),
    # * counts in every domain
    (["mbm_total_bytes:*=e\n"], {0: 9, 1: 2}),
    # two lines, each fine alone, not together
    (["mbm_total_bytes:0=e\n", "mbm_local_bytes:0=e\n"], {0: 3, 1: 9}),
    # the same domain twice in one line costs once, but two events cost two
    (["mbm_total_bytes:*=e\n", "mbm_local_bytes:*=e\n"], {0: 3, 1: 3}),
    # nothing free at all
    (["mbm_local_bytes:0=e\n"], {0: 0, 1: 0}),
])
def test_assignments_past_the_reserve_are_refused(lines: list[str],
                                                  available: dict[int, int]) -> None:
    e = _refused(lines, available, NONE)
    assert e.errno == errno.ENOSPC  # as the kernel's own "no free counter"
    assert "counters kept free for other resctrl users" in str(e)
    assert "[cmt_privsep] mbm_counter_reserve" in str(e)


def test_the_refusal_names_the_domain_the_reserve_and_what_is_free() -> None:
    e = _refused(["mbm_total_bytes:0=e;1=e\n"], {0: 5, 1: 4}, NONE, {0: 4, 1: 4})
    assert str(e).endswith("rule mbm-counter-reserve: 'mbm_total_bytes:0=e;1=e' not written: "
                           "it would take the MBM counters kept free for other resctrl users "
                           "such as pqos or libvirt ([cmt_privsep] mbm_counter_reserve) in "
                           "domain 1 (4 free, 4 kept)"), str(e)


def test_what_the_group_holds_costs_nothing() -> None:
    # already assigned in every domain: nothing free is needed
    check_counter_reserve(["mbm_total_bytes:*=e\n", "mbm_local_bytes:0=e;1=e\n"],
                          {0: 0, 1: 0}, BOTH, KEEP2)
    held = {"mbm_total_bytes": {0: True, 1: False}}
    check_counter_reserve(["mbm_total_bytes:0=e\n"], {0: 0, 1: 0}, held, KEEP2)
    _refused(["mbm_total_bytes:*=e\n"], {0: 0, 1: 2}, held)  # domain 1 is new
    # the assignments file unreadable: everything counts as new
    _refused(["mbm_total_bytes:0=e\n"], {0: 2}, None)


def test_releases_always_pass_and_free_counters_for_later_lines() -> None:
    for lines in (["mbm_total_bytes:*=_\n"], ["mbm_local_bytes:0=_;1=_\n"]):
        check_counter_reserve(lines, {0: 0, 1: 0}, BOTH, KEEP2)
        check_counter_reserve(lines, None, None, KEEP2)  # not even read
    # local given back in domain 0, then total takes it there
    held = {"mbm_total_bytes": {0: False}, "mbm_local_bytes": {0: True}}
    check_counter_reserve(["mbm_local_bytes:0=_\n", "mbm_total_bytes:0=e\n"], {0: 2}, held,
                          {0: 2})
    # the other order: total is refused before local is given back
    _refused(["mbm_total_bytes:0=e\n", "mbm_local_bytes:0=_\n"], {0: 2}, held, {0: 2})
    # releasing what the group does not hold frees nothing
    _refused(["mbm_local_bytes:1=_\n", "mbm_total_bytes:1=e\n"], {0: 9, 1: 2}, NONE)


def test_a_domain_the_kernel_does_not_list_costs_nothing() -> None:
    """The kernel refuses it itself (EINVAL, "Invalid domain id")."""
    check_counter_reserve(["mbm_total_bytes:7=e\n"], {0: 0, 1: 0}, NONE, KEEP2)


def test_outside_mbm_event_mode_assignments_are_refused() -> None:
    e = _refused(["mbm_total_bytes:0=e\n"], None, NONE)
    assert e.errno == errno.EINVAL and "available_mbm_cntrs cannot be read" in str(e)


def test_refusals_are_logged_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    rules._logged.clear()
    with caplog.at_level(logging.WARNING, logger="ceilometer_cmt.privsep.rules"):
        for _ in range(5):
            _refused(["mbm_total_bytes:0=e\n"], {0: 2}, NONE)
    assert len(caplog.records) == 1
    assert f"(rule {RULE})" in caplog.records[0].getMessage()


def test_mkdir_gives_back_what_it_took_past_the_reserve() -> None:
    # mkdir took total and local in both domains; domain 0 is 1 short, domain 1 2
    lines = counters_past_reserve({0: 1, 1: 0}, BOTH, KEEP2)
    assert lines == ["mbm_local_bytes:0=_;1=_\n", "mbm_total_bytes:1=_\n"]
    assert counters_past_reserve({0: 2, 1: 5}, BOTH, KEEP2) == []
    # nothing held: nothing to give
    assert counters_past_reserve({0: 0, 1: 0}, NONE, KEEP2) == []
    assert counters_past_reserve({0: 0}, None, {0: 2}) == []
    # only what it holds, even when that does not reach the reserve
    held = {"mbm_total_bytes": {0: True}, "mbm_local_bytes": {0: False}}
    assert counters_past_reserve({0: 0}, held, {0: 2}) == ["mbm_total_bytes:0=_\n"]


@given(st.dictionaries(st.integers(0, 3), st.integers(0, 12), min_size=1),
       st.lists(st.tuples(st.sampled_from(["mbm_total_bytes", "mbm_local_bytes"]),
                          st.one_of(st.just("*"), st.integers(0, 3)),
                          st.booleans()), min_size=1, max_size=6),
       st.integers(0, 4))
def test_what_passes_never_takes_the_reserve(available: dict[int, int],
                                             ops: list[tuple[str, int | str, bool]],
                                             keep: int) -> None:
    """Play what passes as the kernel would: no domain ends below the reserve
    unless it started there (and then nothing was taken in it)."""
    lines = [f"{ev}:{dom}={'e' if on else '_'}\n" for ev, dom, on in ops]
    reserve = dict.fromkeys(available, keep)
    try:
        check_counter_reserve(lines, available, NONE, reserve)
    except OSError:
        return
    free = dict(available)
    held: dict[str, set[int]] = {"mbm_total_bytes": set(), "mbm_local_bytes": set()}
    for ev, dom, on in ops:
        for d in (sorted(free) if dom == "*" else [dom]):
            if d not in free or (d in held[ev]) == on or (on and not free[d]):
                continue  # the kernel: no such domain, no change, or ENOSPC
            free[d] += -1 if on else 1
            if on:
                held[ev].add(d)
            else:
                held[ev].discard(d)
            assert free[d] >= min(keep, available[d]), (lines, available, keep)
