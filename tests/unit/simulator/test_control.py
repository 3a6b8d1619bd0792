"""The simulator's control commands (``handle``), here the value read counter."""

from __future__ import annotations

import pytest

from ceilometer_cmt.simulator.control import handle
from ceilometer_cmt.simulator.model import Model
from ceilometer_cmt.simulator.scenario import parse_scenario
from ceilometer_cmt.simulator.topology import get_topology
from ceilometer_cmt.simulator.tree import File, resolve


def model(topology: str) -> Model:
    topo = get_topology(topology)
    return Model(topo, parse_scenario({"clock": "manual", "limbo_seconds": 0}, topo))


def read(m: Model, path: str) -> str:
    node = resolve(m, tuple(path.split("/")))
    assert isinstance(node, File)
    return node.read()


def test_reads_counts_each_value_file_read() -> None:
    m = model("intel-2s")
    m.mkdir(("mon_groups", "g"))
    assert handle(m, {"cmd": "reads"}) == {}
    for _ in range(3):
        read(m, "mon_groups/g/mon_data/mon_L3_00/llc_occupancy")
    read(m, "mon_groups/g/mon_data/mon_L3_01/mbm_total_bytes")
    read(m, "mon_data/mon_L3_00/llc_occupancy")  # the default group's
    read(m, "info/L3_MON/num_rmids")  # not a value: not counted
    read(m, "mon_groups/g/tasks")
    assert handle(m, {"cmd": "reads"}) == {
        "mon_data/mon_L3_00/llc_occupancy": 1,
        "mon_groups/g/mon_data/mon_L3_00/llc_occupancy": 3,
        "mon_groups/g/mon_data/mon_L3_01/mbm_total_bytes": 1}
    assert handle(m, {"cmd": "reads", "match": "*/mbm_*"}) == {
        "mon_groups/g/mon_data/mon_L3_01/mbm_total_bytes": 1}
    assert handle(m, {"cmd": "reads", "match": "*/mbm_*", "reset": True}) == {
        "mon_groups/g/mon_data/mon_L3_01/mbm_total_bytes": 1}
    assert handle(m, {"cmd": "reads"}) == {}  # reset clears every count


@pytest.mark.parametrize("topology,path", [
    ("snc", "mon_groups/g/mon_data/mon_L3_00/mon_sub_L3_01/llc_occupancy"),
    ("intel-aet", "mon_groups/g/mon_data/mon_PERF_PKG_01/core_energy"),
])
def test_reads_counts_sub_node_and_package_files(topology: str, path: str) -> None:
    m = model(topology)
    m.mkdir(("mon_groups", "g"))
    read(m, path)
    assert handle(m, {"cmd": "reads"}) == {path: 1}
