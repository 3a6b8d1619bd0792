"""The AET (``PERF_PKG``) fixture trees are the simulator's ``intel-aet``
host: the same info files, mon_data directories and value texts (the
simulator's model, not FUSE)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ceilometer_cmt.simulator.model import Model
from ceilometer_cmt.simulator.scenario import parse_scenario
from ceilometer_cmt.simulator.topology import get_topology
from ceilometer_cmt.simulator.tree import File, resolve
from ceilometer_cmt.testing.kernel_trees import build_resctrl
from ceilometer_cmt.testing.perf_pkg_tree import (
    BINARY_BITS,
    PERF_PKG_EVENTS,
    PerfPkgKernelOps,
    build_perf_pkg,
    set_telemetry,
)

TOPO = get_topology("intel-aet")
PACKAGES = tuple(p.id for p in TOPO.packages)


class Host:
    """One intel-aet host twice: a fixture tree and the simulator's model."""

    def __init__(self, tmp: Path) -> None:
        self.model = Model(TOPO, parse_scenario({"clock": "manual", "limbo_seconds": 0}, TOPO))
        self.root = build_resctrl(str(tmp / "r"), TOPO)
        build_perf_pkg(self.root, PACKAGES, num_rmids=TOPO.perf_pkg_rmids)
        self.ops = PerfPkgKernelOps(self.root, TOPO, packages=PACKAGES)

    def sim(self, path: str) -> str | list[str]:
        node = resolve(self.model, tuple(path.split("/")))
        assert node is not None, path
        return node.read() if isinstance(node, File) else sorted(node.entries)

    def fixture(self, path: str) -> str | list[str]:
        full = os.path.join(self.root, path)
        return Path(full).read_text() if os.path.isfile(full) else sorted(os.listdir(full))

    def differences(self, paths: list[str]) -> list[str]:
        return [f"{p}: fixture {self.fixture(p)!r}, simulator {self.sim(p)!r}"
                for p in paths if self.fixture(p) != self.sim(p)]


def test_info_and_mon_data_are_the_simulators(tmp_path: Path) -> None:
    h = Host(tmp_path)
    h.ops.mkdir(os.path.join(h.root, "mon_groups", "g"))
    h.model.mkdir(("mon_groups", "g"))
    paths = ["info/PERF_PKG_MON", "info/PERF_PKG_MON/num_rmids",
             "info/PERF_PKG_MON/mon_features", "info/L3_MON/num_rmids",
             "info/L3_MON/mon_features"]
    for group in ("", "mon_groups/g/"):
        paths.append(f"{group}mon_data")
        for pkg in PACKAGES:
            d = f"{group}mon_data/mon_PERF_PKG_{pkg:02d}"
            paths += [d] + [f"{d}/{event}" for event in PERF_PKG_EVENTS]
    assert h.differences(paths) == []
    assert h.fixture("info/PERF_PKG_MON/num_rmids") == "576\n"
    assert h.fixture("mon_groups/g/mon_data") == [
        "mon_L3_00", "mon_L3_01", "mon_PERF_PKG_00", "mon_PERF_PKG_01"]


def test_the_comparison_can_fail(tmp_path: Path) -> None:
    h = Host(tmp_path)
    set_telemetry(h.root, 1, "activity", "0.0")
    assert h.differences(["mon_data/mon_PERF_PKG_01/activity"]) == [
        "mon_data/mon_PERF_PKG_01/activity: fixture '0.0\\n', simulator '0.000000\\n'"]


#: register values: zero, the smallest step, a half step (rounds up), whole
#: units, and values that carry into the integer part when rounded
RAWS = (0, 1, 2, 1 << 17, (1 << 17) - 1, 1 << 18, 3 * (1 << 18) + 12345,
        (1 << 18) - 1, 123456789 * (1 << 18) + (1 << 18) - 2, (1 << 52) + 5)


@pytest.mark.parametrize("event", PERF_PKG_EVENTS)
def test_value_texts_are_the_simulators(tmp_path: Path, event: str) -> None:
    """The same register value reads the same: fixed point with 18 fraction
    bits for core_energy and activity (print_event_value()), ``%llu`` else."""
    h = Host(tmp_path)
    group = h.model.mkdir(("mon_groups", "g"))
    h.ops.mkdir(os.path.join(h.root, "mon_groups", "g"))
    path = f"mon_groups/g/mon_data/mon_PERF_PKG_01/{event}"
    bits = BINARY_BITS.get(event, 0)
    for raw in RAWS:
        h.model.packages.values[(group.rmid, 1, event)] = raw / (1 << bits)  # exact: < 2**53
        assert h.model.packages.raw(group.rmid, 1, event) == raw
        set_telemetry(os.path.join(h.root, "mon_groups", "g"), 1, event, raw)
        assert h.differences([path]) == [], raw
    raw = 3 * (1 << 18) + 12345
    set_telemetry(os.path.join(h.root, "mon_groups", "g"), 1, event, raw)
    # 12345 / 2**18 = 0.04709244: six decimal places for 18 bits, rounded
    assert h.fixture(path) == ("3.047092\n" if bits else f"{raw}\n")


def test_a_linux_7_host_shows_mbm_assign_mode(tmp_path: Path) -> None:
    h = Host(tmp_path)
    assert h.sim("info/L3_MON/mbm_assign_mode") == "[default]\n"
    assert h.differences(["info/L3_MON/mbm_assign_mode", "info/L3_MON"]) == []
