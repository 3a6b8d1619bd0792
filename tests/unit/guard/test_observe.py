"""What a guard cycle reads, on kernel-format fixture trees: the agent's
monitor groups summed per domain (no data stays None, never 0), neighbours,
control groups of threads, CLOSIDs (the smallest of the resources).  The
allocation info is read by the backend's schemata module (its tests)."""

from __future__ import annotations

import os
from typing import Any

from ceilometer_cmt.guard.observe import (
    GuardInstance,
    observe,
    read_closids,
)
from ceilometer_cmt.testing.kernel_trees import set_value

PREFIX = "ceilometer-"
U1 = "11111111-1111-4111-8111-111111111111"
U2 = "22222222-2222-4222-8222-222222222222"
U3 = "33333333-3333-4333-8333-333333333333"


def write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def test_occupancy_neighbours_and_groups(host: Any) -> None:
    size = host.topo.l3[0].size
    q1 = host.start_qemu("instance-1", extra_threads=1)
    host.start_qemu("instance-2")
    host.start_qemu("instance-3")
    # instance 1 is in two control groups (a thread in "tuned"): both its groups count
    os.makedirs(os.path.join(host.resctrl, "tuned", "mon_groups"))
    write(os.path.join(host.resctrl, "tuned", "tasks"), f"{q1.tids[1]}\n")
    for group in (os.path.join(host.resctrl, "mon_groups", PREFIX + U1),
                  os.path.join(host.resctrl, "tuned", "mon_groups", PREFIX + U1)):
        os.makedirs(group)
        set_value(group, 0, "llc_occupancy", size // 4)
        set_value(group, 1, "llc_occupancy", 0)
    g2 = os.path.join(host.resctrl, "mon_groups", PREFIX + U2)
    host.ops.mkdir(g2)
    set_value(g2, 0, "llc_occupancy", size // 10)
    set_value(g2, 1, "llc_occupancy", "Unavailable")
    listed = [GuardInstance(U1, "instance-1"), GuardInstance(U2, "instance-2"),
              GuardInstance(U3, "instance-3"), GuardInstance("gone", "instance-9")]
    seen = observe(host.resctrl, "/proc", host.sysfs, host.pid_dir, PREFIX, listed)
    by = {i.uuid: i for i in seen.instances}
    assert by[U1].occupancy == {0: 50.0, 1: 0.0}
    assert by[U1].groups == frozenset({"", "tuned"})
    assert by[U1].neighbours == frozenset({0})  # instance 2 holds cache in L3 0 only
    assert by[U2].occupancy == {0: 10.0, 1: None}  # no data, never 0
    assert by[U2].neighbours == frozenset({0})
    assert by[U3].occupancy == {}  # no agent group: no data, no decision
    assert list(seen.skipped) == ["gone"]
    assert seen.tids[U1] == list(q1.tids)
    assert seen.closids.in_use == 1


def test_a_group_its_threads_left_is_not_the_instances_occupancy(host: Any) -> None:
    """Capped: the instance's threads are all in the cap group. Its old
    monitor group in the default group still reports the lines its RMID
    filled (until evicted): those are not counted, as the agent does not."""
    size = host.topo.l3[0].size
    q1 = host.start_qemu("instance-1", extra_threads=1)
    cap = os.path.join(host.resctrl, PREFIX + "cap-25")
    os.makedirs(os.path.join(cap, "mon_groups"))
    write(os.path.join(cap, "tasks"), "".join(f"{t}\n" for t in q1.tids))
    stale = os.path.join(host.resctrl, "mon_groups", PREFIX + U1)
    capped = os.path.join(cap, "mon_groups", PREFIX + U1)
    for group, value in ((stale, size // 2), (capped, size // 4)):
        os.makedirs(group)
        set_value(group, 0, "llc_occupancy", value)
        set_value(group, 1, "llc_occupancy", 0)
    seen = observe(host.resctrl, "/proc", host.sysfs, host.pid_dir, PREFIX,
                   [GuardInstance(U1, "instance-1")])
    (inst,) = seen.instances
    assert inst.groups == frozenset({PREFIX + "cap-25"})
    assert inst.occupancy == {0: 25.0, 1: 0.0}


def test_closids_are_the_smallest_of_the_resources(tmp_path: Any) -> None:
    root = str(tmp_path)
    write(f"{root}/info/L3CODE/num_closids", "8\n")
    write(f"{root}/info/L3DATA/num_closids", "8\n")
    write(f"{root}/info/MB/num_closids", "4\n")
    write(f"{root}/info/L3_MON/num_rmids", "176\n")
    assert read_closids(root, {"": [], "a": [], "b": []}).num_closids == 4
    assert read_closids(root, {"": [], "a": [], "b": []}).in_use == 2
