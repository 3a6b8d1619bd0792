"""Intel AET (``PERF_PKG``, Linux 7.0) in the simulator's state machine:
the files, the fixed-point format of fs/resctrl/ctrlmondata.c
``print_event_value()``, plausible values and the RMID limit.
"""

from __future__ import annotations

import errno

import pytest

from ceilometer_cmt.simulator.model import Model
from ceilometer_cmt.simulator.scenario import Fault
from ceilometer_cmt.simulator.telemetry import EVENTS, print_event_value
from tests.unit.simulator.test_assign import ROOT, advance, entries, errno_of, model, read

PKG = "mon_groups/a/mon_data/mon_PERF_PKG_00"


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (0, "0.000000\n"),
        (1 << 18, "1.000000\n"),
        (3 << 17, "1.500000\n"),
        (1, "0.000004\n"),  # 3.81e-6 rounds up to 4e-6
        (2, "0.000008\n"),  # 7.63e-6 rounds up
        ((1 << 18) - 1, "0.999996\n"),  # never carries into the integer part
        (12 * (1 << 18) + 90631, "12.345730\n"),  # .3457298
        (2**64 - 1, f"{(2**64 - 1) >> 18}.999996\n"),
    ],
)
def test_fixed_point_prints_like_the_kernel(raw: int, text: str) -> None:
    assert print_event_value(18, raw) == text


def test_fixed_point_other_widths() -> None:
    assert print_event_value(0, 7) == "7.0\n"
    assert print_event_value(27, (1 << 27) // 3) == "0.333333328\n"
    assert print_event_value(4, 0b1011) == "0.69\n"  # 0.6875 -> 2 decimals


def busy(cpu: object = 4, traffic: object = "2GiB") -> Model:
    m = model("intel-aet", processes=[{
        "name": "vm", "match": {"pid": 1}, "split": "main",
        "timeline": [{"t": 0, "cpu": {0: cpu}, "mbm_total": {0: traffic}}],
    }])
    m.mkdir(("mon_groups", "a"))
    group = m.group_at(("mon_groups", "a"))
    assert group is not None
    m.write_tasks(group, b"1\n", ROOT)
    return m


def values(m: Model, path: str = PKG) -> dict[str, float]:
    return {e: float(read(m, f"{path}/{e}")) for e in EVENTS}


def test_perf_pkg_files_and_formats() -> None:
    m = busy()
    assert entries(m, "info") == ("L3", "L3_MON", "PERF_PKG_MON", "last_cmd_status")
    assert entries(m, "info/PERF_PKG_MON") == ("mon_features", "num_rmids")
    assert read(m, "info/PERF_PKG_MON/num_rmids") == "576\n"
    assert read(m, "info/L3_MON/num_rmids") == "1024\n"
    assert read(m, "info/PERF_PKG_MON/mon_features") == "".join(f"{e}\n" for e in EVENTS)
    assert read(m, "info/L3_MON/mbm_assign_mode") == "[default]\n"
    assert entries(m, "mon_groups/a/mon_data") == (
        "mon_L3_00", "mon_L3_01", "mon_PERF_PKG_00", "mon_PERF_PKG_01")
    assert entries(m, PKG) == EVENTS
    advance(m, 10)
    for event in EVENTS:
        text = read(m, f"{PKG}/{event}")
        if event in ("core_energy", "activity"):
            whole, _, frac = text[:-1].partition(".")
            assert whole.isdigit() and len(frac) == 6 and frac.isdigit(), text
        else:
            assert text[:-1].isdigit(), text
    assert read(m, f"{PKG}/core_energy") == "60.000000\n"  # 4 CPUs x 1.5 W x 10 s
    assert read(m, "mon_groups/a/mon_data/mon_PERF_PKG_01/core_energy") == "0.000000\n"
    for bad in ("mon_PERF_PKG_2", "mon_PERF_PKG_02", "mon_PERF_PKG_0"):  # two digits, 2 pkgs
        assert errno_of(lambda b=bad: read(m, f"mon_data/{b}/core_energy")) == errno.ENOENT  # type: ignore[misc]


def test_values_grow_with_the_load_and_stay_plausible() -> None:
    m = busy(cpu=4, traffic="2GiB")
    last = values(m)
    for _ in range(3):
        advance(m, 5)
        now = values(m)
        assert all(now[e] >= last[e] for e in EVENTS), (last, now)
        assert now["core_energy"] > last["core_energy"]
        assert now["unhalted_core_cycles"] > last["unhalted_core_cycles"]
        last = now
    ipc = last["uops_retired"] / last["unhalted_core_cycles"]
    stalls = last["stalls_llc_miss"] / last["unhalted_core_cycles"]
    assert 0.5 < ipc < 2.5 and 0 < stalls < 0.6
    assert last["unhalted_ref_cycles"] < last["unhalted_core_cycles"]
    # more memory traffic per busy CPU: lower IPC, more LLC-miss stalls
    heavy = busy(cpu=4, traffic="16GiB")
    advance(heavy, 15)
    hv = values(heavy)
    assert hv["uops_retired"] / hv["unhalted_core_cycles"] < ipc
    assert hv["stalls_llc_miss"] / hv["unhalted_core_cycles"] > stalls
    # the idle CPUs are the root group's: it sleeps in C6 and C1
    root = values(m, "mon_data/mon_PERF_PKG_00")
    assert root["c6_res"] > root["c1_res"] > last["c1_res"]


def test_without_cpu_load_one_cpu_per_gib_per_second() -> None:
    m = model("intel-aet", processes=[{
        "name": "vm", "match": {"pid": 1}, "split": "main",
        "timeline": [{"t": 0, "mbm_total": {1: "2GiB"}}],
    }])
    m.mkdir(("mon_groups", "a"))
    group = m.group_at(("mon_groups", "a"))
    assert group is not None
    m.write_tasks(group, b"1\n", ROOT)
    advance(m, 1)
    assert read(m, "mon_groups/a/mon_data/mon_PERF_PKG_01/unhalted_core_cycles") == (
        f"{int(2 * 2.2e9)}\n")


def test_counts_belong_to_the_rmid_and_faults_apply() -> None:
    m = busy()
    advance(m, 2)
    before = read(m, f"{PKG}/unhalted_core_cycles")
    m.rmdir(("mon_groups", "a"))  # limbo 0: the RMID is free again...
    m.ids.free_rmids.rotate(1)  # ...and next in line
    m.mkdir(("mon_groups", "a"))
    assert read(m, f"{PKG}/unhalted_core_cycles") == before  # no reset for PERF_PKG
    m.add_fault(Fault("Unavailable", "mon_groups/a", 0, "core_energy"))
    assert read(m, f"{PKG}/core_energy") == "Unavailable\n"
    assert read(m, "mon_groups/a/mon_data/mon_PERF_PKG_01/core_energy") == "0.000000\n"


def test_group_limit_is_the_smaller_num_rmids() -> None:
    m = model("intel-aet")
    assert len(m.ids.free_rmids) == 575  # PERF_PKG_MON's 576, RMID 0 is the root's
    small = model("intel-aet", rmids=8)  # L3_MON smaller now
    for i in range(7):
        small.mkdir(("mon_groups", f"g{i}"))
    assert errno_of(lambda: small.mkdir(("mon_groups", "x"))) == errno.ENOSPC
    assert read(small, "info/PERF_PKG_MON/num_rmids") == "576\n"
    small.set_rmids(2048)
    assert len(small.ids.free_rmids) == 576 - 1 - 7
