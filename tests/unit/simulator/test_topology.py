"""The simulator's host presets: the older ones as they were, the Linux
6.18 ABMC host, the Linux 7.0 AET host and the arm64 MPAM host."""

from __future__ import annotations

from pathlib import Path

from ceilometer_cmt.simulator.topology import PRESETS, get_topology


def test_older_presets_model_no_newer_interface() -> None:
    for name, rmids in (("intel-2s", 176), ("amd-ccx", 256), ("snc", 128)):
        topo = get_topology(name)
        assert (topo.num_rmids, topo.rmid_limit) == (rmids, rmids)
        assert not topo.assign_mode_file and not topo.bmec and not topo.packages
        assert topo.num_mbm_cntrs == 0
        assert (topo.shareable_bits, topo.pmgs, topo.arch) == (0, 0, "x86_64")
        assert not topo.assign_fixed and not topo.padded_schemata


def test_amd_abmc_preset() -> None:
    topo = get_topology("amd-abmc")
    assert [c.id for c in topo.l3] == [0, 1] and topo.num_mbm_cntrs == 8
    assert topo.assign_mode_file and topo.bmec and not topo.packages
    assert topo.cpus == tuple(range(16)) and topo.rmid_limit == 256
    # fewer counters than the root plus the demo's 4 instances x 2 events
    assert topo.num_mbm_cntrs < 2 + 4 * 2


def test_intel_aet_preset(tmp_path: Path) -> None:
    topo = get_topology("intel-aet")
    assert [p.id for p in topo.packages] == [0, 1]
    assert [len(p.cpus) for p in topo.packages] == [144, 144]
    assert (topo.num_rmids, topo.perf_pkg_rmids, topo.rmid_limit) == (1024, 576, 576)
    assert topo.assign_mode_file and topo.num_mbm_cntrs == 0 and not topo.bmec
    topo.write_sysfs(str(tmp_path))
    index3 = tmp_path / "devices/system/cpu/cpu287/cache/index3"
    assert (index3 / "id").read_text() == "1\n"
    assert (index3 / "shared_cpu_list").read_text() == "144-287\n"


def test_arm64_mpam_preset(tmp_path: Path) -> None:
    """doc/kernel-facts-mpam.md: num_closids = PARTIDs (32), num_rmids =
    PARTIDs x PMGs (512, ``resctrl_arch_system_num_rmid_idx()``), every
    portion hardware-shared, sparse masks of at least one bit, CSU and MBWU
    on the L3 (``llc_occupancy``, ``mbm_total_bytes``; never
    ``mbm_local_bytes``), MBWU only in a fixed ``mbm_event`` mode, no BMEC."""
    topo = get_topology("arm64-mpam")
    assert topo.l3_ids == (0, 1) and topo.cpus == tuple(range(64)) and not topo.snc
    assert (topo.num_closids, topo.pmgs) == (32, 16)
    assert topo.num_rmids == topo.rmid_limit == 32 * 16
    assert (topo.cbm_len, topo.cbm_mask, topo.shareable_bits) == (16, 0xFFFF, 0xFFFF)
    assert topo.min_cbm_bits == 1 and topo.sparse_masks and topo.padded_schemata
    assert topo.mon_features == ("llc_occupancy", "mbm_total_bytes")
    assert topo.assign_mode_file and topo.assign_fixed and topo.num_mbm_cntrs == 8
    assert not topo.bmec and not topo.packages and topo.arch == "aarch64"
    # update_rmid_limits(): the L3 size over the whole rmid_idx space
    assert topo.max_threshold_occupancy == 32 * 1024 * 1024 // 512
    topo.write_sysfs(str(tmp_path))
    index3 = tmp_path / "devices/system/cpu/cpu63/cache/index3"
    assert (index3 / "id").read_text() == "1\n"
    assert (index3 / "shared_cpu_list").read_text() == "32-63\n"


def test_preset_names() -> None:
    assert sorted(PRESETS) == ["amd-abmc", "amd-ccx", "arm64-mpam", "intel-2s", "intel-aet",
                               "snc"]


def test_l3_ids_cpus_by_l3_and_cbm_mask_derive_from_the_caches() -> None:
    topo = get_topology("intel-2s")
    assert topo.l3_ids == (0, 1)
    assert topo.cpus_by_l3 == {0: tuple(range(10)) + tuple(range(20, 30)),
                               1: tuple(range(10, 20)) + tuple(range(30, 40))}
    assert (topo.cbm_len, topo.cbm_mask) == (20, 0xFFFFF)
    snc = get_topology("snc")
    assert snc.l3_ids == (0, 1) and len(snc.mon_domains) == 4
    for name in PRESETS:
        topo = get_topology(name)
        assert sorted(c for cpus in topo.cpus_by_l3.values() for c in cpus) == list(topo.cpus)
