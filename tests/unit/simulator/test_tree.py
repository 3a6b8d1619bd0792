"""What the files of :mod:`.tree` read on the arm64 MPAM preset: every
expectation is a fact of doc/kernel-facts-mpam.md (drivers/resctrl/mpam_resctrl.c,
fs/resctrl/)."""

from __future__ import annotations

import errno

from ceilometer_cmt.simulator.model import Model
from ceilometer_cmt.simulator.tree import Dir, resolve
from tests.unit.simulator.test_assign import errno_of, model, read, status, write


def listing(m: Model, path: str) -> list[str]:
    node = resolve(m, tuple(path.split("/")))
    assert isinstance(node, Dir), path
    return sorted(node.entries)


def test_info_shows_partids_pmgs_and_portions_shared_with_hardware() -> None:
    m = model("arm64-mpam")
    assert read(m, "info/L3/num_closids") == "32\n"  # mpam_partid_max + 1
    assert read(m, "info/L3_MON/num_rmids") == "512\n"  # x (mpam_pmg_max + 1)
    assert read(m, "info/L3/cbm_mask") == "ffff\n"
    assert read(m, "info/L3/shareable_bits") == "ffff\n"  # "all the bitmap fields"
    assert read(m, "info/L3/min_cbm_bits") == "1\n"
    assert read(m, "info/L3/sparse_masks") == "1\n"
    assert read(m, "info/L3/bit_usage") == "0=XXXXXXXXXXXXXXXX;1=XXXXXXXXXXXXXXXX\n"
    # CSU and MBWU; never mbm_local_bytes, no *_config lines (no BMEC)
    assert read(m, "info/L3_MON/mon_features") == "llc_occupancy\nmbm_total_bytes\n"
    assert "mbm_total_bytes_config" not in listing(m, "info/L3_MON")
    assert listing(m, "mon_data/mon_L3_01") == ["llc_occupancy", "mbm_total_bytes"]
    # CDP-capable L3 without CDP: the name padded by 4, masks with "%x"
    assert read(m, "schemata") == "    L3:0=ffff;1=ffff\n"


def test_no_group_can_be_exclusive() -> None:
    """Not even a group whose mask no other group shares: the hardware
    shares every portion (``__rdtgroup_cbm_overlaps()`` checks
    ``shareable_bits`` first)."""
    m = model("arm64-mpam")
    m.mkdir(("c",))
    write(m, "schemata", b"L3:0=fffe;1=fffe\n")
    write(m, "c/schemata", b"L3:0=1;1=1\n")
    assert read(m, "c/schemata") == "    L3:0=1;1=1\n"
    assert errno_of(lambda: write(m, "c/mode", b"exclusive\n")) == errno.EINVAL
    assert status(m) == "Schemata overlaps\n"
    assert read(m, "c/mode") == "shareable\n"
