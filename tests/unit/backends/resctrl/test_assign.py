"""The MBM counter policy: rules by example, then properties (budget, no
counter taken from an equal-or-higher priority, no flapping under churn)."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ceilometer_cmt.backends.resctrl import assign
from ceilometer_cmt.backends.resctrl.assign import (
    Change,
    CounterClaim,
    CounterPlan,
    plan,
    priority_of,
)
from ceilometer_cmt.backends.resctrl.assign_files import parse_assignments

TOTAL, LOCAL = "mbm_total_bytes", "mbm_local_bytes"


def inst(uuid: str, domains: Iterable[int], held: dict[str, Iterable[int]] | None = None,
         priority: int = 0, since: float = 0.0, idle: bool = False,
         owner: str = "") -> CounterClaim:
    return CounterClaim(uuid, frozenset(domains),
                    {e: frozenset(d) for e, d in (held or {}).items()}, priority, since,
                    idle, owner)


def apply(available: dict[int, int], insts: list[CounterClaim], p: CounterPlan
          ) -> tuple[dict[int, int], list[CounterClaim]]:
    """What the kernel has once the plan's lines are written: releases, then assignments."""
    free = dict(available)
    held = {i.uuid: {e: set(d) for e, d in i.held.items()} for i in insts}
    for c in p.release:
        assert c.domain in held[c.uuid].get(c.event, set()), c
        held[c.uuid][c.event].discard(c.domain)
        free[c.domain] += 1
    for c in p.assign:
        assert c.domain not in held[c.uuid].get(c.event, set()), c
        assert free[c.domain] >= 1, ("over budget", c)
        held[c.uuid].setdefault(c.event, set()).add(c.domain)
        free[c.domain] -= 1
    out = [replace(i, held={e: frozenset(d) for e, d in held[i.uuid].items() if d})
           for i in insts]
    return free, out


def test_priority_of_metadata() -> None:
    assert priority_of({"cmt:mbm_priority": "10"}) == 10
    assert priority_of({"cmt:mbm_priority": " -3 "}) == -3
    assert priority_of({"cmt:mbm_priority": 7}) == 7
    for bad in ("", "high", "1.5", "\u0661", "9" * 40, True, None, [1]):
        assert priority_of({"cmt:mbm_priority": bad}) == 0
    assert priority_of({}) == 0 and priority_of(None) == 0


def test_assigns_only_where_the_instance_may_run_total_first() -> None:
    p = plan({0: 4, 1: 4, 2: 4}, [inst("a", [0, 1])])
    assert set(p.assign) == {Change("a", TOTAL, 0), Change("a", TOTAL, 1),
                             Change("a", LOCAL, 0), Change("a", LOCAL, 1)}
    assert p.assign[0].event == TOTAL and p.release == ()
    assert p.assign_lines() == {"a": ["mbm_total_bytes:0=e;1=e\n",
                                      "mbm_local_bytes:0=e;1=e\n"]}
    assert parse_assignments("".join(p.assign_lines()["a"])) == {
        TOTAL: {0: True, 1: True}, LOCAL: {0: True, 1: True}}
    assert p.unmonitored == {}


def test_counters_outside_the_affinity_or_of_unwanted_events_are_released() -> None:
    p = plan({0: 0, 1: 0}, [inst("a", [0], {TOTAL: [0, 1], LOCAL: [0]})], events=[TOTAL])
    assert set(p.release) == {Change("a", TOTAL, 1), Change("a", LOCAL, 0)}
    assert p.assign == () and p.held == {"a": {TOTAL: frozenset({0})}}
    assert p.release_lines() == {"a": ["mbm_total_bytes:1=_\n", "mbm_local_bytes:0=_\n"]}


def test_all_domains_or_none_and_total_before_local() -> None:
    # 3 counters in domain 0, 1 in domain 1: a gets total, b (younger) total in
    # neither (domain 1 is gone), so b's partial hold is released
    insts = [inst("a", [0, 1], since=1), inst("b", [0, 1], {TOTAL: [0]}, since=2)]
    p = plan({0: 2, 1: 1}, insts)
    assert p.held == {"a": {TOTAL: frozenset({0, 1})}, "b": {}}
    assert Change("b", TOTAL, 0) in p.release
    assert set(p.unmonitored) == {"b"}
    assert "mbm_total_bytes: no free MBM counter in L3 domain(s) [1]" in p.unmonitored["b"]
    # a's local is not given before b's total could be: total first for everyone
    assert p.missing["a"] == {LOCAL: "mbm_local_bytes: no free MBM counter in L3 domain(s) "
                                     "[1] (held by instances of equal or higher priority, "
                                     "or by other tools)"}


def test_holders_keep_their_counters_against_older_equal_priority() -> None:
    insts = [inst("old", [0], since=1), inst("new", [0], {TOTAL: [0]}, since=5)]
    p = plan({0: 0}, insts, events=[TOTAL])
    assert p.assign == () and p.release == ()
    assert "old" in p.unmonitored and "new" not in p.unmonitored


def test_higher_priority_takes_from_the_lowest_youngest_holder() -> None:
    insts = [inst("vip", [0], priority=5, since=9),
             inst("low-old", [0], {TOTAL: [0]}, priority=-1, since=1),
             inst("low-young", [0], {TOTAL: [0]}, priority=-1, since=2),
             inst("mid", [0], {TOTAL: [0]}, priority=0, since=3)]
    p = plan({0: 0}, insts, events=[TOTAL])
    assert p.release == (Change("low-young", TOTAL, 0),)
    assert p.assign == (Change("vip", TOTAL, 0),)
    assert "higher priority" in p.unmonitored["low-young"]


def test_a_holder_that_lost_its_counters_says_to_whom() -> None:
    """The holder comes later in the order than the one that took its
    counter, and later rounds see it without any: the reason stays."""
    insts = [inst("u1", [0], {TOTAL: [0], LOCAL: [0]}, since=1),
             inst("u2", [0], {TOTAL: [0]}, since=2),
             inst("vip", [0], {TOTAL: [0]}, priority=10, since=3)]
    p = plan({0: 0}, insts)
    assert p.release == (Change("u1", LOCAL, 0),) and p.assign == (Change("vip", LOCAL, 0),)
    assert p.missing["u1"] == {
        LOCAL: f"{LOCAL}: its counters went to instance vip of higher priority"}
    assert "no free MBM counter" in p.missing["u2"][LOCAL]


def test_a_local_never_takes_a_total() -> None:
    insts = [inst("vip", [0], {TOTAL: [0]}, priority=5), inst("low", [0], {TOTAL: [0]})]
    p = plan({0: 0}, insts)
    assert p.release == () and p.assign == ()
    assert LOCAL in p.missing["vip"]


def test_unknown_domains_and_no_affinity_have_reasons() -> None:
    p = plan({0: 4}, [inst("a", [0, 7]), inst("b", [])])
    assert "L3 domain(s) [7] have no MBM counters" in p.unmonitored["a"]
    assert "no L3 domain known" in p.unmonitored["b"]
    assert p.assign == ()


BOTH = {TOTAL: [0, 1], LOCAL: [0, 1]}


def test_an_idle_group_keeps_its_counters_while_nobody_lacks_one() -> None:
    """The guard capped instance a: its default group holds no thread now.
    Free counters serve the cap group; the idle one keeps its own (no
    reset when the threads come back), and is never given any."""
    idle = inst("a/", [0, 1], BOTH, idle=True, owner="a")
    capg = inst("a/cap", [0, 1], owner="a")
    p = plan({0: 2, 1: 2}, [idle, capg])
    assert p.release == () and {c.uuid for c in p.assign} == {"a/cap"}
    assert p.missing == {}
    p = plan({0: 0, 1: 0}, [inst("a/", [0, 1], {TOTAL: [0, 1]}, idle=True, owner="a")])
    assert p.assign == () and p.release == () and p.missing == {}


def test_the_threads_group_takes_its_idle_groups_counters_first() -> None:
    """No free counter: the counters follow the threads into the cap group,
    ahead of an older waiting instance of the same priority, which gets
    none and keeps its reason."""
    idle = inst("a/", [0, 1], BOTH, since=5.0, idle=True, owner="a")
    capg = inst("a/cap", [0, 1], since=5.0, owner="a")
    older = inst("b/", [0, 1], since=1.0, owner="b")
    p = plan({0: 0, 1: 0}, [idle, capg, older])
    assert set(p.release) == {Change("a/", e, d) for e in (TOTAL, LOCAL) for d in (0, 1)}
    assert set(p.assign) == {Change("a/cap", e, d) for e in (TOTAL, LOCAL) for d in (0, 1)}
    assert p.held["a/"] == {} and p.held["a/cap"] == {e: frozenset({0, 1})
                                                       for e in (TOTAL, LOCAL)}
    assert "a/" not in p.missing and "a/cap" not in p.missing
    assert set(p.missing["b/"]) == {TOTAL, LOCAL}


def test_anyone_waiting_takes_an_idle_groups_spare_counters() -> None:
    """The threads' group holds its own: the idle one's counters go to any
    instance waiting, even of lower priority; the idle group gets no
    reason. A partial idle holding counts nothing and is released."""
    idle = inst("a/", [0, 1], BOTH, priority=9, idle=True, owner="a")
    capg = inst("a/cap", [0, 1], BOTH, priority=9, owner="a")
    low = inst("c/", [1], priority=-5, since=9.0, owner="c")
    p = plan({0: 0, 1: 0}, [idle, capg, low])
    assert set(p.assign) == {Change("c/", TOTAL, 1), Change("c/", LOCAL, 1)}
    # taking domain 1 leaves a partial holding: domain 0 goes back too (rule 2)
    assert set(p.release) == {Change("a/", e, d) for e in (TOTAL, LOCAL) for d in (0, 1)}
    assert p.held["a/"] == {} and p.missing == {}
    again = plan({0: 0, 1: 2}, [inst("a/", [0, 1], {TOTAL: [0]}, idle=True, owner="a")])
    assert again.release == (Change("a/", TOTAL, 0),) and again.missing == {}


def test_cap_and_release_back_and_forth_churns_nothing_with_spare_counters() -> None:
    """The guard caps and releases every round: with a free counter for the
    cap group, the default group keeps its counters throughout."""
    free = {0: 2, 1: 2}
    default = inst("a/", [0, 1], BOTH, owner="a")
    for rnd in range(10):
        capped = rnd % 2 == 0
        groups = [replace(default, idle=capped)]
        if capped:
            groups.append(inst("a/cap", [0, 1], owner="a"))
        p = plan(free, groups)
        assert all(c.uuid == "a/cap" for c in p.assign + p.release), (rnd, p)
        free, after = apply(free, groups, p)
        default = after[0]
        assert default.held == {e: frozenset({0, 1}) for e in (TOTAL, LOCAL)}
        if capped:  # the guard's rmdir of the cap group frees its counters
            for doms in after[1].held.values():
                for d in doms:
                    free[d] += 1


# ------------------------------------------------------------------ properties
DOMS = (0, 1, 2, 3)


@st.composite
def worlds(draw: st.DrawFn) -> tuple[dict[int, int], list[CounterClaim]]:
    n_dom = draw(st.integers(1, len(DOMS)))
    doms = DOMS[:n_dom]
    cap = draw(st.integers(0, 6))
    insts: list[CounterClaim] = []
    used = dict.fromkeys(doms, 0)
    for k in range(draw(st.integers(0, 8))):
        domains = draw(st.frozensets(st.sampled_from(doms + (9,)), max_size=n_dom + 1))
        held: dict[str, frozenset[int]] = {}
        for ev in (TOTAL, LOCAL):
            want = draw(st.frozensets(st.sampled_from(doms), max_size=n_dom))
            got = frozenset(d for d in want if used[d] < cap)
            for d in got:
                used[d] += 1
            if got:
                held[ev] = got
        insts.append(CounterClaim(f"i{k}", domains, held, draw(st.integers(-2, 2)),
                              draw(st.integers(0, 5)), draw(st.booleans()),
                              f"o{draw(st.integers(0, 3))}"))
    available = {d: cap - used[d] for d in doms}
    return available, insts


def by_uuid(insts: list[CounterClaim]) -> dict[str, CounterClaim]:
    return {i.uuid: i for i in insts}


@given(worlds(), st.sampled_from([(TOTAL, LOCAL), (TOTAL,), (LOCAL,)]))
@settings(max_examples=300)
def test_never_over_budget_and_idempotent(world: tuple[dict[int, int], list[CounterClaim]],
                                          events: tuple[str, ...]) -> None:
    available, insts = world
    p = plan(available, insts, events)
    free, after = apply(available, insts, p)  # asserts the budget at each assignment
    assert all(n >= 0 for n in free.values())
    for i in after:  # all domains or none, only where it may run
        for ev, doms in i.held.items():
            assert doms == i.domains and ev in events, (i, p)
    assert not [c for c in p.assign if by_uuid(insts)[c.uuid].idle], p  # rule 7
    assert not [u for u in p.missing if by_uuid(insts)[u].idle], p
    again = plan(free, after, events)
    assert again.assign == () and again.release == (), again


@given(worlds())
@settings(max_examples=300)
def test_no_counter_taken_from_an_equal_or_higher_priority_holder(
        world: tuple[dict[int, int], list[CounterClaim]]) -> None:
    available, insts = world
    p = plan(available, insts)
    gainers = {c.uuid for c in p.assign}
    by = {i.uuid: i for i in insts}
    for c in p.release:
        holder = by[c.uuid]
        if holder.idle:
            continue  # rule 7: spare for anyone
        whole = holder.held.get(c.event, frozenset()) == holder.domains
        if not whole:
            continue  # rule 1/2: useless where it is, released for anyone
        # a complete holding is lost only to someone of strictly higher priority
        takers = [by[u] for u in gainers if by[u].priority > holder.priority]
        assert takers, (c, p)


def test_no_flapping_over_100_rounds_with_churn() -> None:
    rng = random.Random(14)
    cap = {0: 6, 1: 6, 2: 6}
    insts: list[CounterClaim] = []
    free = dict(cap)
    serial = 0
    complete_since: dict[tuple[str, str], int] = {}
    for rnd in range(100):
        # churn: instances leave (their groups go with their counters) and come
        for i in list(insts):
            if rng.random() < 0.15:
                insts.remove(i)
                for doms in i.held.values():
                    for d in doms:
                        free[d] += 1
        for _ in range(rng.randint(0, 3)):
            serial += 1
            doms = frozenset(rng.sample(sorted(cap), rng.randint(1, 2)))
            insts.append(CounterClaim(f"vm{serial:03d}", doms, {}, 0, float(serial)))
        p = plan(free, insts)
        free, insts = apply(free, insts, p)
        assert sum(free.values()) + sum(len(d) for i in insts for d in i.held.values()) \
            == sum(cap.values())
        live = {i.uuid for i in insts}
        for i in insts:
            for ev in i.held:
                complete_since.setdefault((i.uuid, ev), rnd)
        # equal priorities: once complete, a holding stays until its instance leaves
        for (u, ev), _start in list(complete_since.items()):
            if u not in live:
                del complete_since[(u, ev)]
                continue
            now = next(i for i in insts if i.uuid == u)
            assert now.held.get(ev) == now.domains, (rnd, u, ev)
        # and a plan right after applying changes nothing
        still = plan(free, insts)
        assert still.assign == () and still.release == ()


def test_module_documents_its_rules() -> None:
    doc = assign.__doc__ or ""
    for words in ("Only where the instance may run", "mbm_total_bytes before mbm_local_bytes",
                  "Holders keep their counters", "Higher priority first, then the oldest",
                  "A reason for each instance left out", "Idle groups are spare"):
        assert words in doc


@pytest.mark.parametrize("events", [(), ("llc_occupancy",)])
def test_no_wanted_event_releases_everything(events: tuple[str, ...]) -> None:
    p = plan({0: 0}, [inst("a", [0], {TOTAL: [0]})], events)
    assert p.release == (Change("a", TOTAL, 0),) and p.assign == ()
