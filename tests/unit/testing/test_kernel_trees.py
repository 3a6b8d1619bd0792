"""The fixture trees are of the simulator's topologies: the same host, the
same files, whichever of the two a test reads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ceilometer_cmt.simulator.model import Model
from ceilometer_cmt.simulator.scenario import parse_scenario
from ceilometer_cmt.simulator.topology import PRESETS, format_cpu_list, get_topology
from ceilometer_cmt.simulator.tree import Dir, File, resolve
from ceilometer_cmt.testing.kernel_trees import KernelOps, build_resctrl, build_sysfs

#: info files the fixture tree writes, by path below ``info/``
INFO = ("L3/cbm_mask", "L3/num_closids", "L3/min_cbm_bits", "L3/sparse_masks", "L3/shareable_bits",
        "L3_MON/num_rmids", "L3_MON/max_threshold_occupancy", "L3_MON/mon_features")


def simulated(name: str) -> Model:
    topo = get_topology(name)
    return Model(topo, parse_scenario({"clock": "manual", "limbo_seconds": 0}, topo))


def sim_text(m: Model, path: str) -> str:
    node = resolve(m, tuple(path.split("/")))
    assert isinstance(node, File), path
    return node.read()


def sim_listing(m: Model, path: str) -> list[str]:
    node = resolve(m, tuple(path.split("/")))
    assert isinstance(node, Dir), path
    return sorted(node.entries)


def text(root: str, path: str) -> str:
    return Path(root, path).read_text()


def masks(schemata: str) -> dict[str, dict[int, int]]:
    """resource -> {domain id: CBM} of a ``schemata`` text."""
    out = {}
    for line in schemata.splitlines():
        name, _, doms = line.partition(":")
        out[name.strip()] = {int(i): int(v, 16) for i, _, v in
                             (d.partition("=") for d in doms.split(";"))}
    return out


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_info_files_are_the_simulators(tmp_path: Path, name: str) -> None:
    root = build_resctrl(str(tmp_path / "r"), get_topology(name))
    m = simulated(name)
    for path in INFO:
        assert text(root, f"info/{path}") == sim_text(m, f"info/{path}"), path
    # the same masks; the text differs as kernels do: the fixture pads the
    # name as on CDP-capable hardware and prints "%x", the simulator "%0*x"
    # (doc/kernel-facts-cat.md, "Read format")
    assert masks(text(root, "schemata")) == masks(sim_text(m, "schemata"))


@pytest.mark.parametrize("name", ["intel-2s", "amd-ccx", "snc", "amd-abmc", "arm64-mpam"])
def test_mon_data_layout_is_the_simulators(tmp_path: Path, name: str) -> None:
    """``mon_L3_XX`` per L3, with SNC ``mon_sub_L3_YY`` per node below it;
    intel-aet is left out: its ``mon_PERF_PKG_XX`` come from perf_pkg_tree."""
    topo = get_topology(name)
    root = build_resctrl(str(tmp_path / "r"), topo)
    m = simulated(name)
    assert sorted(os.listdir(f"{root}/mon_data")) == sim_listing(m, "mon_data")
    for l3 in topo.l3_ids:
        d = f"mon_data/mon_L3_{l3:02d}"
        assert sorted(os.listdir(f"{root}/{d}")) == sim_listing(m, d)
        for node in topo.domains_of(l3) if topo.snc else ():
            sub = f"{d}/mon_sub_L3_{node.id:02d}"
            assert sorted(os.listdir(f"{root}/{sub}")) == sim_listing(m, sub)


def test_kernel_formats_of_the_intel_2s_preset(tmp_path: Path) -> None:
    """Written out once by hand: a 20-bit CBM is ``fffff`` (``%x``), a 30 MiB L3
    ``30720K``, a new monitor group gets every L3's value files."""
    topo = get_topology("intel-2s")
    root = build_resctrl(str(tmp_path / "r"), topo)
    assert text(root, "info/L3/cbm_mask") == "fffff\n"
    assert text(root, "schemata") == "    L3:0=fffff;1=fffff\n"
    group = f"{root}/mon_groups/g"
    KernelOps(root, topo).mkdir(group)
    assert sorted(os.listdir(f"{group}/mon_data")) == ["mon_L3_00", "mon_L3_01"]
    sysfs = build_sysfs(str(tmp_path / "sys"), topo)
    index3 = f"{sysfs}/devices/system/cpu/cpu39/cache/index3"
    assert text(index3, "size") == "30720K\n"
    assert text(index3, "shared_cpu_list") == "10-19,30-39\n"
    assert text(index3, "id") == "1\n"


def test_arm64_mpam_tree_is_what_the_kernel_and_the_simulator_show(tmp_path: Path) -> None:
    """doc/kernel-facts-mpam.md: every portion hardware-shared, the L3 line
    padded as a CDP-capable resource's with ``%x`` masks, no
    ``mbm_local_bytes`` anywhere, a fixed ``[mbm_event]`` mode whose one MBM
    event has a read-only filter, and the default group's total counter."""
    from ceilometer_cmt.testing.mbm_assign_tree import AssignKernelOps, build_abmc_resctrl

    topo = get_topology("arm64-mpam")
    root = build_abmc_resctrl(str(tmp_path / "r"), topo, num_cntrs=topo.num_mbm_cntrs)
    m = simulated("arm64-mpam")
    for path in ("info/L3/shareable_bits", "info/L3_MON/mon_features",
                 "info/L3_MON/mbm_assign_mode", "info/L3_MON/num_mbm_cntrs",
                 "info/L3_MON/available_mbm_cntrs", "info/L3_MON/mbm_assign_on_mkdir",
                 "info/L3_MON/event_configs/mbm_total_bytes/event_filter",
                 "mbm_L3_assignments", "schemata"):
        assert text(root, path) == sim_text(m, path), path
    assert text(root, "schemata") == "    L3:0=ffff;1=ffff\n"
    assert text(root, "info/L3_MON/mbm_assign_mode") == "[mbm_event]\n"
    assert text(root, "mbm_L3_assignments") == "mbm_total_bytes:0=e;1=e\n"
    assert os.listdir(f"{root}/info/L3_MON/event_configs") == ["mbm_total_bytes"]
    assert not any(n.endswith("_config") for n in os.listdir(f"{root}/info/L3_MON"))
    group = f"{root}/mon_groups/g"
    AssignKernelOps(root, topo, num_cntrs=topo.num_mbm_cntrs).mkdir(group)
    m.mkdir(("mon_groups", "g"))
    assert sorted(os.listdir(f"{group}/mon_data/mon_L3_00")) == sim_listing(
        m, "mon_groups/g/mon_data/mon_L3_00") == ["llc_occupancy", "mbm_total_bytes"]
    for path in ("mon_groups/g/mbm_L3_assignments", "info/L3_MON/available_mbm_cntrs"):
        assert text(root, path) == sim_text(m, path), path


def test_snc_nodes_below_their_l3(tmp_path: Path) -> None:
    topo = get_topology("snc")
    root = build_resctrl(str(tmp_path / "r"), topo)
    assert sorted(os.listdir(f"{root}/mon_data/mon_L3_01")) == [
        "llc_occupancy", "mbm_local_bytes", "mbm_total_bytes", "mon_sub_L3_02", "mon_sub_L3_03"]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_sysfs_has_every_cpu_with_private_l1_l2(tmp_path: Path, name: str) -> None:
    topo = get_topology(name)
    sysfs = build_sysfs(str(tmp_path / "sys"), topo)
    cpu_dir = f"{sysfs}/devices/system/cpu"
    assert sorted(os.listdir(cpu_dir)) == sorted(f"cpu{c}" for c in topo.cpus)
    for cache in topo.l3:
        cpu = cache.cpus[-1]
        assert sorted(os.listdir(f"{cpu_dir}/cpu{cpu}/cache")) == [
            "index0", "index1", "index2", "index3"]
        assert text(f"{cpu_dir}/cpu{cpu}/cache/index2", "shared_cpu_list") == f"{cpu}\n"
        assert text(f"{cpu_dir}/cpu{cpu}/cache/index3", "shared_cpu_list") == (
            format_cpu_list(cache.cpus) + "\n")
