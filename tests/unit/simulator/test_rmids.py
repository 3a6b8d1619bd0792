"""RMID and CLOSID allocation: with RMIDs that depend on the CLOSID (arm64
MPAM), a group only takes an RMID of its own CLOSID
(fs/resctrl/monitor.c ``resctrl_find_free_rmid()``, doc/kernel-facts-mpam.md)."""

from __future__ import annotations

import errno

from tests.unit.simulator.test_assign import errno_of, model, status


def test_a_control_group_holds_at_most_pmg_max_monitor_groups() -> None:
    """RMIDs depend on the CLOSID (``resctrl_find_free_rmid()``): the default
    group's PARTID has 16 PMGs, PMG 0 its own, so 15 monitor groups; the
    16th mkdir fails although 512 - 16 RMIDs of other CLOSIDs are free. A
    new control group brings the PMGs of its own PARTID."""
    m = model("arm64-mpam")
    for i in range(15):
        m.mkdir(("mon_groups", f"m{i}"))
    assert errno_of(lambda: m.mkdir(("mon_groups", "m15"))) == errno.ENOSPC
    assert status(m) == "Out of RMIDs\n"
    c = m.mkdir(("c",))
    assert c.closid == 1 and c.rmid // 16 == 1
    for i in range(15):
        assert m.mkdir(("c", "mon_groups", f"m{i}")).rmid // 16 == 1
    assert errno_of(lambda: m.mkdir(("c", "mon_groups", "m15"))) == errno.ENOSPC
    m.rmdir(("mon_groups", "m3"))  # limbo_seconds 0: free at once
    m.mkdir(("mon_groups", "again"))
