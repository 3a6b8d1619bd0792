"""The mbm_event fixture trees (AMD ABMC) are the simulator's ``amd-abmc``
host: the same files and texts the plugin reads, whichever a test uses, after
the same mkdirs and assignment writes (the simulator's model, not FUSE)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ceilometer_cmt.simulator.errors import SimError
from ceilometer_cmt.simulator.groups import Caller
from ceilometer_cmt.simulator.model import Model
from ceilometer_cmt.simulator.scenario import parse_scenario
from ceilometer_cmt.simulator.topology import get_topology
from ceilometer_cmt.simulator.tree import Dir, File, resolve
from ceilometer_cmt.testing.mbm_assign_tree import AssignKernelOps, build_abmc_resctrl

TOPO = get_topology("amd-abmc")
#: what the plugin reads of a host with assignable counters (info/L3_MON/...)
ASSIGN_INFO = ("info/L3_MON/mbm_assign_mode", "info/L3_MON/num_mbm_cntrs",
               "info/L3_MON/available_mbm_cntrs", "info/L3_MON/mbm_assign_on_mkdir",
               "info/L3_MON/mon_features",
               "info/L3_MON/event_configs/mbm_total_bytes/event_filter",
               "info/L3_MON/event_configs/mbm_local_bytes/event_filter")


class Host:
    """One amd-abmc host twice: a fixture tree and the simulator's model."""

    def __init__(self, tmp: Path, mode: str = "mbm_event") -> None:
        self.model = Model(TOPO, parse_scenario({"clock": "manual", "limbo_seconds": 0}, TOPO))
        if mode != "mbm_event":
            self.write_sim("info/L3_MON/mbm_assign_mode", f"{mode}\n")
        self.root = build_abmc_resctrl(str(tmp / "r"), TOPO, num_cntrs=TOPO.num_mbm_cntrs,
                                       mode=mode)
        self.ops = AssignKernelOps(self.root, TOPO, num_cntrs=TOPO.num_mbm_cntrs)

    def node(self, path: str) -> Dir | File:
        node = resolve(self.model, tuple(path.split("/")) if path else ())
        assert node is not None, path
        return node

    def write_sim(self, path: str, text: str) -> int:
        """A write through the model: 0 or the errno."""
        node = self.node(path)
        assert isinstance(node, File) and node.write is not None, path
        try:
            node.write(text.encode(), Caller())
        except SimError as e:
            return e.errno
        return 0

    def mkdir(self, group: str) -> None:
        self.ops.mkdir(os.path.join(self.root, group))
        self.model.mkdir(tuple(group.split("/")))

    def differences(self, paths: tuple[str, ...] | list[str]) -> list[str]:
        """The paths whose fixture and simulator texts (or listings) differ,
        read in this order (a read of some files clears last_cmd_status)."""
        out = []
        for path in paths:
            node = self.node(path)
            sim = node.read() if isinstance(node, File) else sorted(node.entries)
            full = os.path.join(self.root, path)
            fixture = (Path(full).read_text() if os.path.isfile(full)
                       else sorted(os.listdir(full)))
            if fixture != sim:
                out.append(f"{path}: fixture {fixture!r}, simulator {sim!r}")
        return out


def test_a_booted_host_is_the_simulators(tmp_path: Path) -> None:
    """ABMC hardware boots in mbm_event mode, the default group holding
    total and local in every domain."""
    h = Host(tmp_path)
    assert h.differences([*ASSIGN_INFO, "mbm_L3_assignments", "info/L3_MON",
                          "info/L3_MON/event_configs"]) == []
    assert Path(h.root, "info/L3_MON/available_mbm_cntrs").read_text() == "0=6;1=6\n"


def test_the_comparison_can_fail(tmp_path: Path) -> None:
    h = Host(tmp_path)
    Path(h.root, "info/L3_MON/available_mbm_cntrs").write_text("0=6;1=5\n")
    Path(h.root, "info/L3_MON/spare").write_text("")
    assert h.differences(["info/L3_MON/available_mbm_cntrs", "info/L3_MON"]) == [
        "info/L3_MON/available_mbm_cntrs: fixture '0=6;1=5\\n', simulator '0=6;1=6\\n'",
        "info/L3_MON: fixture ['available_mbm_cntrs', 'event_configs', "
        "'max_threshold_occupancy', 'mbm_assign_mode', 'mbm_assign_on_mkdir', "
        "'mon_features', 'num_mbm_cntrs', 'num_rmids', 'spare'], simulator "
        "['available_mbm_cntrs', 'event_configs', 'max_threshold_occupancy', "
        "'mbm_assign_mode', 'mbm_assign_on_mkdir', 'mon_features', 'num_mbm_cntrs', "
        "'num_rmids']"]


def test_mkdir_takes_counters_until_none_is_left_as_the_simulator(tmp_path: Path) -> None:
    """8 counters per domain, 2 each for the default group and the first
    three groups; the fourth and fifth get none, and last_cmd_status says so."""
    h = Host(tmp_path)
    for i in range(5):
        h.mkdir(f"mon_groups/g{i}")
        assert h.differences(["info/last_cmd_status", f"mon_groups/g{i}/mbm_L3_assignments",
                              "info/L3_MON/available_mbm_cntrs", f"mon_groups/g{i}"]) == [], i
    assert Path(h.root, "mon_groups/g4/mbm_L3_assignments").read_text() == (
        "mbm_total_bytes:0=_;1=_\nmbm_local_bytes:0=_;1=_\n")
    h.ops.rmdir(os.path.join(h.root, "mon_groups/g1"))
    h.model.rmdir(("mon_groups", "g1"))
    assert h.differences(["info/L3_MON/available_mbm_cntrs"]) == []


@pytest.mark.parametrize("group, line, errno", [
    ("g0", "mbm_total_bytes:0=_", 0),   # frees one counter
    ("g3", "mbm_local_bytes:*=e", 28),  # every domain, none left in domain 0: ENOSPC
    ("g2", "mbm_total_bytes:1=e", 0),   # already held: no action
    ("g0", "bogus:0=e", 2),             # ENOENT "Invalid event"
    ("g0", "mbm_total_bytes:9=e", 22),  # EINVAL "Invalid domain id"
    ("g0", "mbm_total_bytes:0=x", 22),  # EINVAL "Assign operation ... failed"
    ("g1", "mbm_local_bytes:1=_", 0),
])
def test_assignment_writes_are_the_simulators(tmp_path: Path, group: str, line: str,
                                              errno: int) -> None:
    h = Host(tmp_path)
    for i in range(4):
        h.mkdir(f"mon_groups/g{i}")
    h.write_sim("mon_groups/g2/mbm_L3_assignments", "mbm_local_bytes:1=_\n")  # one free in 1
    h.ops.write_assignments(os.path.join(h.root, "mon_groups/g2"), ["mbm_local_bytes:1=_"])
    h.write_sim("mon_groups/g3/mbm_L3_assignments", "mbm_local_bytes:1=e\n")  # takes it
    h.ops.write_assignments(os.path.join(h.root, "mon_groups/g3"), ["mbm_local_bytes:1=e"])
    h.write_sim("mon_groups/g0/mbm_L3_assignments", "mbm_total_bytes:1=_\n")
    h.ops.write_assignments(os.path.join(h.root, "mon_groups/g0"), ["mbm_total_bytes:1=_"])
    fixture = [err for _, err in h.ops.write_assignments(
        os.path.join(h.root, "mon_groups", group), [line])]
    sim = h.write_sim(f"mon_groups/{group}/mbm_L3_assignments", line + "\n")
    assert sim == errno
    assert fixture == ([sim] if sim else [])
    assert h.differences(["info/last_cmd_status", "info/L3_MON/available_mbm_cntrs"] + [
        f"mon_groups/g{i}/mbm_L3_assignments" for i in range(4)]) == []


def test_default_mode_is_the_simulators_where_a_plain_file_can_follow(tmp_path: Path) -> None:
    """In ``default`` mode the BMEC ``*_config`` files are back (and listed in
    mon_features); available_mbm_cntrs, mbm_assign_on_mkdir, event_configs and
    mbm_L3_assignments fail with EINVAL, which a plain file cannot: the
    fixture leaves them out."""
    h = Host(tmp_path, mode="default")
    assert h.differences([
        "info/L3_MON/mbm_assign_mode", "info/L3_MON/num_mbm_cntrs",
        "info/L3_MON/mon_features", "info/L3_MON/mbm_total_bytes_config",
        "info/L3_MON/mbm_local_bytes_config"]) == []
    assert Path(h.root, "info/L3_MON/mon_features").read_text() == (
        "llc_occupancy\nmbm_total_bytes\nmbm_total_bytes_config\nmbm_local_bytes\n"
        "mbm_local_bytes_config\n")
    for path in ("info/L3_MON/available_mbm_cntrs", "info/L3_MON/mbm_assign_on_mkdir",
                 "mbm_L3_assignments"):
        node = h.node(path)
        assert isinstance(node, File)
        with pytest.raises(SimError) as e:
            node.read()
        assert e.value.errno == 22, path
        assert not os.path.exists(os.path.join(h.root, path))
