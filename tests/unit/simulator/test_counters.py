"""What mon_data reads: occupancy bounded by CAT (a control group's share of
the ways) and by the cache, as hardware would bound it."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ceilometer_cmt.simulator.counters import allocate, cbm_bytes
from ceilometer_cmt.simulator.groups import Caller, Group
from ceilometer_cmt.simulator.model import Model
from ceilometer_cmt.simulator.scenario import parse_scenario
from ceilometer_cmt.simulator.timeline import ManualClock
from ceilometer_cmt.simulator.topology import get_topology

MiB = 1024 * 1024
INTEL = get_topology("intel-2s")  # 30 MiB L3s, 20 ways
DOM = INTEL.mon_domains[0]


def groups() -> tuple[Group, Group, Group]:
    root = Group("", "ctrl", None, 0, 0, schemata={0: 0xFFFFF, 1: 0xFFFFF})
    cap = Group("cap", "ctrl", None, 1, 1, schemata={0: 0x1F, 1: 0xFFFFF})
    mon = Group("vm", "mon", cap, 1, 2)
    return root, cap, mon


def test_cbm_bytes_is_the_share_of_ways() -> None:
    assert cbm_bytes(INTEL, DOM, 0xFFFFF) == 30 * MiB
    assert cbm_bytes(INTEL, DOM, 0x1F) == 30 * MiB * 5 / 20
    assert cbm_bytes(INTEL, DOM, 0) == 0


def test_a_capped_group_holds_at_most_its_ways_and_neighbours_take_the_room() -> None:
    root, cap, mon = groups()
    ctrl_of = {id(root): root, id(cap): cap, id(mon): cap}
    # before: noisy (in root) and a neighbour want 27 + 9 MiB of 30: both squeezed
    before = allocate(INTEL, DOM, {id(root): 36 * MiB}, {id(root): root})
    assert before[id(root)] == 30 * MiB
    # after: noisy in the capped group's monitor group: a quarter, 7.5 MiB
    after = allocate(INTEL, DOM, {id(root): 9 * MiB, id(mon): 27 * MiB}, ctrl_of)
    assert after[id(mon)] == pytest.approx(7.5 * MiB)
    assert after[id(root)] == pytest.approx(9 * MiB)  # the neighbour's demand, in full
    # the control group's own RMID and its monitor groups share the bound
    shared = allocate(INTEL, DOM, {id(cap): 10 * MiB, id(mon): 30 * MiB}, ctrl_of)
    assert shared[id(cap)] + shared[id(mon)] == pytest.approx(7.5 * MiB)
    assert shared[id(mon)] == pytest.approx(3 * shared[id(cap)])
    # the other domain's mask is full: no bound there
    other = allocate(INTEL, INTEL.mon_domains[1], {id(mon): 27 * MiB}, ctrl_of)
    assert other[id(mon)] == 27 * MiB


def test_a_full_cache_is_shared_among_overlapping_masks() -> None:
    root, cap, mon = groups()
    ctrl_of = {id(root): root, id(mon): cap}
    out = allocate(INTEL, DOM, {id(root): 30 * MiB, id(mon): 30 * MiB}, ctrl_of)
    assert sum(out.values()) == pytest.approx(30 * MiB)
    assert out[id(mon)] <= 7.5 * MiB
    # only capped groups with demand: the union of their ways is the room
    alone = allocate(INTEL, DOM, {id(mon): 30 * MiB, id(root): 0.0}, ctrl_of)
    assert alone[id(mon)] == pytest.approx(7.5 * MiB)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    p = subprocess.Popen(["sleep", "300"])
    yield p
    p.kill()
    p.wait()


def test_moving_a_task_into_a_capped_group_bounds_its_occupancy(
        sleeper: subprocess.Popen[bytes]) -> None:
    scenario = parse_scenario({"clock": "manual", "processes": [
        {"match": {"pid": sleeper.pid}, "timeline": [{"t": 0, "occupancy": {0: "80%"}}]},
    ]}, INTEL)
    m = Model(INTEL, scenario, clock=ManualClock(), scan_interval=0)
    m.mkdir(("mon_groups", "vm"))
    m.write_tasks(m.root.children["vm"], b"%d" % sleeper.pid, Caller(0, os.getpid()))
    gran = INTEL.occupancy_granularity

    def read(group: Group) -> int:
        return int(m.read_event(group, 0, None, "llc_occupancy"))

    assert read(m.root.children["vm"]) == int(24 * MiB) // gran * gran
    m.mkdir(("cap",))
    cap = m.ctrl_groups["cap"]
    m.write_schemata(cap, b"L3:0=1f\n")
    m.mkdir(("cap", "mon_groups", "vm"))
    m.write_tasks(cap, b"%d" % sleeper.pid, Caller(0, os.getpid()))
    m.write_tasks(cap.children["vm"], b"%d" % sleeper.pid, Caller(0, os.getpid()))
    assert read(cap.children["vm"]) == int(7.5 * MiB) // gran * gran
    assert read(cap) == read(cap.children["vm"])  # the control group sums its RMIDs
    m.write_schemata(cap, b"L3:0=fffff\n")
    assert read(cap.children["vm"]) == int(24 * MiB) // gran * gran


# ------------------------------------------------------------- properties
@given(
    st.lists(st.tuples(st.integers(0, 0xFFFFF), st.lists(st.floats(0, 60 * MiB), max_size=3)),
             max_size=5),
    st.floats(0, 60 * MiB),
)
def test_allocate_never_gives_more_than_wanted_the_ways_or_the_cache(
        ctrls: list[tuple[int, list[float]]], root_demand: float) -> None:
    root = Group("", "ctrl", None, 0, 0, schemata={0: 0xFFFFF})
    demand: dict[int, float] = {id(root): root_demand}
    ctrl_of: dict[int, Group] = {id(root): root}
    members: dict[int, list[int]] = {id(root): [id(root)]}
    keep = [root]
    for i, (cbm, mons) in enumerate(ctrls, start=1):
        ctrl = Group(f"c{i}", "ctrl", None, i, i, schemata={0: cbm})
        keep.append(ctrl)
        members[id(ctrl)] = []
        for j, want in enumerate(mons):
            mon = Group(f"m{j}", "mon", ctrl, i, 100 * i + j)
            keep.append(mon)
            demand[id(mon)] = want
            ctrl_of[id(mon)] = ctrl
            members[id(ctrl)].append(id(mon))
    out = allocate(INTEL, DOM, demand, ctrl_of)
    slack = 1e-6 * MiB
    assert all(0 <= out[g] <= demand[g] + slack for g in demand)
    assert sum(out.values()) <= DOM.size + slack
    for g in keep:
        if g.kind == "ctrl":
            held = sum(out[m] for m in members[id(g)])
            assert held <= cbm_bytes(INTEL, DOM, g.schemata[0]) + slack
