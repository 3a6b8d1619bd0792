"""The guard's per-cycle decision: hysteresis, no flapping, no cap without a
neighbour, exemption, foreign control groups left alone, one group per cap
level, the CLOSID reserve, release on stop, adoption after a restart."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ceilometer_cmt.guard.policy import (
    DEFAULT_GROUP,
    Closids,
    Cycle,
    GuardPlan,
    InstanceState,
    Options,
    SeenInstance,
    decide,
)

OPTS = Options()
CAP = "ceilometer-cap-25"
FREE = Closids(num_closids=16, in_use=0)


def inst(uuid: str, occ: float | None, *, neighbours: bool = True, group: str = DEFAULT_GROUP,
         exempt: bool = False, groups: frozenset[str] | None = None) -> SeenInstance:
    return SeenInstance(uuid, {0: occ}, frozenset({0}) if neighbours else frozenset(),
                    groups if groups is not None else frozenset({group}), exempt)


class World:
    """Applies plans as the service would: threads move, groups appear."""

    def __init__(self, options: Options = OPTS, closids: Closids = FREE) -> None:
        self.options = options
        self.closids = closids
        self.state: dict[str, InstanceState] = {}
        self.groups: dict[str, str] = {}  # uuid -> control group
        self.ours: set[str] = set()

    def cycle(self, occupancy: Mapping[str, float | None], neighbours: bool = True,
              exempt: bool = False) -> GuardPlan:
        instances = tuple(inst(u, v, group=self.groups.get(u, DEFAULT_GROUP),
                               neighbours=neighbours, exempt=exempt)
                          for u, v in occupancy.items())
        cycle = Cycle(instances, self.closids, frozenset(self.ours))
        self.state, plan = decide(self.state, cycle, self.options)
        for a in plan.actions:
            if a.kind == "mkdir":
                self.ours.add(a.group)
            elif a.kind == "cap":
                self.groups[a.uuid] = a.group
            elif a.kind == "release":
                self.groups.pop(a.uuid, None)
            elif a.kind == "rmdir":
                self.ours.discard(a.group)
        return plan


def kinds(plan: GuardPlan) -> list[tuple[str, str]]:
    return [(a.kind, a.uuid or a.group) for a in plan.actions]


def test_cap_after_three_hot_cycles_with_a_neighbour_then_release_after_ten_calm() -> None:
    w = World()
    assert kinds(w.cycle({"noisy": 80, "quiet": 10})) == []
    assert kinds(w.cycle({"noisy": 80, "quiet": 10})) == []
    plan = w.cycle({"noisy": 80, "quiet": 10})
    assert kinds(plan) == [("mkdir", CAP), ("cap", "noisy")]
    assert plan.actions[0].share == 25
    assert "80% of L3 domain 0" in plan.actions[1].reason
    assert plan.capped == {"noisy": 25}
    assert w.groups == {"noisy": CAP}
    # capped, it holds its share: not calm (the release threshold is 15)
    for _ in range(20):
        assert kinds(w.cycle({"noisy": 24, "quiet": 30})) == []
    for _ in range(9):
        assert kinds(w.cycle({"noisy": 5, "quiet": 30})) == []
    plan = w.cycle({"noisy": 5, "quiet": 30})
    assert kinds(plan) == [("release", "noisy"), ("rmdir", CAP)]
    assert plan.actions[0].move and "for 10 cycles" in plan.actions[0].reason
    assert plan.capped == {}
    assert w.ours == set()


def test_a_broken_streak_starts_again() -> None:
    w = World()
    for occ in (80, 80, 40, 80, 80):
        assert kinds(w.cycle({"a": occ, "b": 1})) == []
    assert kinds(w.cycle({"a": 80, "b": 1}))[-1] == ("cap", "a")
    for occ in [5] * 9 + [20] + [5] * 9:
        assert kinds(w.cycle({"a": occ, "b": 1})) == []
    assert kinds(w.cycle({"a": 5, "b": 1}))[0] == ("release", "a")


def test_no_neighbour_no_cap() -> None:
    w = World()
    for _ in range(10):
        assert kinds(w.cycle({"alone": 95}, neighbours=False)) == []
    # a neighbour on another domain is no neighbour
    state: dict[str, InstanceState] = {}
    for _ in range(5):
        a = SeenInstance("a", {0: 90.0, 1: 10.0}, frozenset({1}))
        state, plan = decide(state, Cycle((a,), FREE), OPTS)
        assert plan.actions == ()


def test_capped_instance_left_alone_is_released() -> None:
    w = World()
    for _ in range(3):
        w.cycle({"a": 90, "b": 1})
    assert w.groups == {"a": CAP}
    for _ in range(9):
        assert kinds(w.cycle({"a": 25}, neighbours=False)) == []
    plan = w.cycle({"a": 25}, neighbours=False)
    assert kinds(plan) == [("release", "a"), ("rmdir", CAP)]
    assert "no other instance" in plan.actions[0].reason


def test_missing_data_holds_the_streaks() -> None:
    w = World()
    w.cycle({"a": 80, "b": 1})
    w.cycle({"a": 80, "b": 1})
    for _ in range(5):
        assert kinds(w.cycle({"a": None, "b": 1})) == []
    assert kinds(w.cycle({"a": 80, "b": 1}))[-1] == ("cap", "a")
    for _ in range(30):
        assert kinds(w.cycle({"a": None, "b": 1})) == []  # no data is not calm
    assert w.groups == {"a": CAP}


def test_one_group_for_every_capped_instance() -> None:
    w = World()
    for _ in range(2):
        w.cycle({"a": 60, "b": 70, "c": 1})
    plan = w.cycle({"a": 60, "b": 70, "c": 1})
    assert kinds(plan) == [("mkdir", CAP), ("cap", "a"), ("cap", "b")]
    for _ in range(9):
        w.cycle({"a": 1, "b": 25, "c": 1})
    plan = w.cycle({"a": 1, "b": 25, "c": 1})
    assert kinds(plan) == [("release", "a")]  # b still in it: the group stays
    assert w.ours == {CAP}


def test_exempt_instances_are_never_capped_and_released_when_they_opt_out() -> None:
    w = World()
    for _ in range(10):
        assert kinds(w.cycle({"a": 90, "b": 1}, exempt=True)) == []
    for _ in range(3):
        w.cycle({"a": 90, "b": 1})
    assert w.groups == {"a": CAP}
    plan = w.cycle({"a": 25, "b": 1}, exempt=True)
    assert kinds(plan) == [("release", "a"), ("rmdir", CAP)]
    assert plan.actions[0].reason == "exempt (cmt:guard=off)"


def test_foreign_control_groups_are_never_touched() -> None:
    cachetune = "qemu-3-instance-00000003-vcpus_0-3"
    state: dict[str, InstanceState] = {}
    for _ in range(10):
        a = inst("a", 95, group=cachetune)
        state, plan = decide(state, Cycle((a, inst("b", 1)), FREE), OPTS)
        assert plan.actions == () and plan.refusals == ()
    # capped by us, then someone else moved it: forget it, move nothing
    state = {"a": InstanceState(capped=25)}
    a = inst("a", 20, groups=frozenset({cachetune, CAP}))
    state, plan = decide(state, Cycle((a,), FREE, frozenset({CAP})), OPTS)
    assert [(x.kind, x.move) for x in plan.actions] == [("release", False), ("rmdir", True)]
    assert state == {"a": InstanceState()}


def test_release_when_the_instance_stops_or_leaves() -> None:
    w = World()
    for _ in range(3):
        w.cycle({"a": 90, "b": 1})
    plan = w.cycle({"b": 1})
    assert kinds(plan) == [("release", "a"), ("rmdir", CAP)]
    assert not plan.actions[0].move
    assert "stopped or left" in plan.actions[0].reason
    assert "a" not in w.state


def test_no_closid_from_the_reserve() -> None:
    # 16 CLOSIDs: 15 for groups, 8 kept free; 7 in use -> taking one leaves 7
    w = World(closids=Closids(16, in_use=7))
    for _ in range(2):
        w.cycle({"a": 90, "b": 1})
    plan = w.cycle({"a": 90, "b": 1})
    assert plan.actions == ()
    assert [r.uuid for r in plan.refusals] == ["a"]
    assert plan.refusals[0].reason == (
        "no CLOSID may be taken for ceilometer-cap-25: 7 of 15 control groups in use, "
        "8 kept free for libvirt (closid_reserve)")
    plan = w.cycle({"a": 90, "b": 1})  # still refused, still nothing half done
    assert plan.actions == () and len(plan.refusals) == 1
    w.closids = Closids(16, in_use=6)
    assert kinds(w.cycle({"a": 90, "b": 1})) == [("mkdir", CAP), ("cap", "a")]
    # Haswell: 4 CLOSIDs, keep 2: one group may be made
    assert Options().reserve(4) == 2
    w = World(closids=Closids(4, in_use=0))
    for _ in range(3):
        plan = w.cycle({"a": 90, "b": 1})
    assert kinds(plan)[0] == ("mkdir", CAP)
    # an existing group of ours needs no CLOSID
    w = World(Options(closid_reserve=100), Closids(16, in_use=15))
    w.ours, w.groups = {CAP}, {"c": CAP}
    for _ in range(3):
        plan = w.cycle({"a": 90, "b": 1, "c": 20})
    assert kinds(plan) == [("cap", "a")]


def test_adoption_after_a_restart() -> None:
    """A new guard (empty state) finds its group with a member: the member
    is capped (no second cap), and is released by the usual rule."""
    old = "ceilometer-cap-30"  # made by a guard run with cap_share = 30
    state: dict[str, InstanceState] = {}
    a = inst("a", 10, group=old)
    state, plan = decide(state, Cycle((a, inst("b", 1)), FREE, frozenset({old, CAP})), OPTS)
    assert kinds(plan) == [("rmdir", CAP)]  # an empty group of ours (crash after mkdir)
    assert state["a"] == InstanceState(calm=1, capped=30)
    assert plan.capped == {"a": 30}
    assert OPTS.calm_below(30) == 18.0
    for _ in range(9):
        state, plan = decide(state, Cycle((a, inst("b", 1)), FREE, frozenset({old})), OPTS)
    assert kinds(plan) == [("release", "a"), ("rmdir", old)]


def test_threads_left_outside_the_cap_group_are_moved() -> None:
    state = {"a": InstanceState(capped=25)}
    a = inst("a", 25, groups=frozenset({CAP, DEFAULT_GROUP}))
    state, plan = decide(state, Cycle((a, inst("b", 1)), FREE, frozenset({CAP})), OPTS)
    assert kinds(plan) == [("cap", "a")]
    assert "outside" in plan.actions[0].reason


def test_options_are_checked() -> None:
    for bad in ({"release_below": 60}, {"cap_after": 0}, {"release_after": 0},
                {"cap_share": 0}, {"cap_share": 101}, {"closid_reserve": -1},
                {"prefix": "a/b"}, {"prefix": ""}):
        with pytest.raises(ValueError):
            Options(**bad)  # type: ignore[arg-type]
    assert OPTS.ours(["ceilometer-cap-25", "qemu-1-vm-vcpus_0-3", "ceilometer-cap-x",
                      "ceilometer-cap-100"]) == {"ceilometer-cap-25", "ceilometer-cap-100"}
    assert OPTS.calm_below(None) == 30.0
    assert OPTS.calm_below(25) == 15.0
    assert Options(cap_share=90).calm_below(90) == 30.0


# ------------------------------------------------------------- properties

occupancies = st.one_of(st.none(), st.floats(min_value=0, max_value=100))


@given(st.lists(st.tuples(occupancies, occupancies, st.booleans()), max_size=40))
def test_never_a_cap_without_a_neighbour(cycles: list[tuple[float | None, float | None,
                                                             bool]]) -> None:
    """Any signal, neighbours coming and going: every cap is of an instance
    with a neighbour in a domain where it is above cap_above."""
    state: dict[str, InstanceState] = {}
    for occ0, occ1, neighbour in cycles:
        a = SeenInstance("a", {0: occ0, 1: occ1}, frozenset({1}) if neighbour else frozenset())
        state, plan = decide(state, Cycle((a,), FREE), OPTS)
        for action in plan.actions:
            if action.kind == "cap":
                assert neighbour and occ1 is not None and occ1 > OPTS.cap_above


band = st.floats(min_value=OPTS.release_below, max_value=OPTS.cap_above)


@given(st.lists(band, min_size=1, max_size=60), st.booleans())
def test_no_flapping_inside_the_hysteresis_band(signal: list[float], capped: bool) -> None:
    """Inside [release_below, cap_above] nothing changes, capped or not."""
    w = World()
    if capped:
        w.groups, w.ours = {"a": CAP}, {CAP}
    for occ in signal:
        assert kinds(w.cycle({"a": occ, "b": 1})) == []
    assert w.groups == ({"a": CAP} if capped else {})


@given(st.lists(st.floats(min_value=0, max_value=100), max_size=80))
def test_caps_and_releases_alternate_with_their_streaks(signal: list[float]) -> None:
    """Whatever the signal: a cap comes only after cap_after hot cycles and
    a release only after release_after calm ones, alternating."""
    w = World()
    last, since = "release", 0
    for occ in signal:
        plan = w.cycle({"a": occ, "b": 1})
        since += 1
        for kind, _ in kinds(plan):
            if kind in ("cap", "release"):
                assert kind != last
                assert since >= (OPTS.cap_after if kind == "cap" else OPTS.release_after)
                last, since = kind, 0
