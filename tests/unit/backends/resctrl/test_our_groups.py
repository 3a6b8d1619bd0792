"""Our monitor groups as a whole, on a fixture tree in the kernel's layout
(adoption through the backend's cycle is in test_backend.py)."""

from __future__ import annotations

import os
from typing import Any

from ceilometer_cmt.backends.resctrl import fs, our_groups
from ceilometer_cmt.simulator.topology import get_topology
from ceilometer_cmt.testing.kernel_trees import EVENTS, KernelOps, _group_files, build_resctrl

U1 = "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab"


def test_valid_uuid_is_lowercase_and_strict() -> None:
    assert our_groups.valid_uuid(" 6F1C2D3E-4A5B-4C6D-8E7F-0123456789AB\n") == U1
    assert our_groups.valid_uuid("6f1c2d3e-4a5b-4c6d-8e7f-0123456789a") is None
    assert our_groups.valid_uuid("../" + U1) is None


def test_owned_remove_and_unlist_never_touch_another_tools_group(tmp_path: Any) -> None:
    topo = get_topology("intel-2s")
    root = build_resctrl(str(tmp_path / "resctrl"), topo)
    ops = KernelOps(root, topo)
    ctrl = os.path.join(root, "qemu-1-vcpus")
    _group_files(topo, ctrl, True, EVENTS)
    paths = {name: os.path.join(root, "mon_groups", name)
             for name in ("ceilometer-" + U1, "ceilometer-odd", "pqos-7")}
    paths["cachetune"] = os.path.join(ctrl, "mon_groups", "ceilometer-" + U1)
    for p in paths.values():
        ops.mkdir(p)
    groups = fs.list_groups(root)
    owned = our_groups.owned(root, "ceilometer-", groups)
    assert owned == {U1: sorted([paths["ceilometer-" + U1], paths["cachetune"]]),
                     "ceilometer-odd": [paths["ceilometer-odd"]]}
    warnings: list[str] = []
    removed = our_groups.remove(root, "ceilometer-", ops, list(paths.values()),
                                warnings.append)
    assert sorted(removed) == sorted(p for n, p in paths.items() if n != "pqos-7")
    assert os.path.isdir(paths["pqos-7"]) and warnings == []
    our_groups.unlist(root, groups, removed)
    assert groups == {"": ["pqos-7"], "qemu-1-vcpus": []}
