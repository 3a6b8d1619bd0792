"""The guard's cycle on a kernel-format fixture tree, its writes through a
recording CatOps that plays the kernel's part (and its refusals): nothing
half done, no data no decision, exemption, dry run, the guard lock."""

from __future__ import annotations

import errno
import os
import shutil
from typing import Any

import pytest

from ceilometer_cmt.backends.resctrl import fs
from ceilometer_cmt.guard import policy
from ceilometer_cmt.guard.observe import GuardInstance
from ceilometer_cmt.guard.service import Guard, GuardBusy, GuardLock, GuardOptions
from ceilometer_cmt.testing.kernel_trees import set_value

PREFIX = "ceilometer-"
U1 = "11111111-1111-4111-8111-111111111111"
U2 = "22222222-2222-4222-8222-222222222222"
CAP = f"{PREFIX}cap-25"


class TreeCatOps:
    """CatOps on a fixture tree: what the kernel would do, or the refusal set."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.calls: list[tuple[str, str]] = []
        self.mkdir_errno: int | None = None
        self.schemata_error: str | None = None
        self.mon_errno: int | None = None

    def _fail(self, err: int, text: str, path: str) -> None:
        with open(os.path.join(self.root, "info", "last_cmd_status"), "w") as f:
            f.write(text + "\n")
        raise OSError(err, text, path)

    def make_ctrl_group(self, ctrl: str) -> None:
        self.calls.append(("mkdir", ctrl))
        path = os.path.join(self.root, ctrl)
        if self.mkdir_errno is not None:
            self._fail(self.mkdir_errno, "Out of CLOSIDs", path)
        os.makedirs(os.path.join(path, "mon_groups"))
        shutil.copy(os.path.join(self.root, "schemata"), os.path.join(path, "schemata"))
        open(os.path.join(path, "tasks"), "w").close()

    def remove_ctrl_group(self, ctrl: str) -> None:
        self.calls.append(("rmdir", ctrl))
        tids = fs.read_tasks(os.path.join(self.root, ctrl))
        shutil.rmtree(os.path.join(self.root, ctrl))
        self._add(self.root, tids)

    def write_schemata(self, ctrl: str, lines: list[str]) -> None:
        self.calls.append(("schemata", ctrl))
        path = os.path.join(self.root, ctrl, "schemata")
        if self.schemata_error is not None:
            self._fail(errno.EINVAL, self.schemata_error, path)
        with open(path, "w") as f:
            f.write("".join(line + "\n" for line in lines))

    @staticmethod
    def _add(group: str, tids: set[int]) -> None:
        with open(os.path.join(group, "tasks"), "a") as f:
            f.write("".join(f"{t}\n" for t in sorted(tids)))

    def move_threads(self, ctrl: str, uuid: str, domain_name: str,
                     tids: list[int]) -> list[tuple[int, int]]:
        self.calls.append(("move", f"{ctrl}:{uuid}"))
        base = fs.ctrl_path(self.root, ctrl)
        mon = os.path.join(base, "mon_groups", PREFIX + uuid)
        if self.mon_errno is not None:
            self._fail(self.mon_errno, "Out of RMIDs", mon)
        if not os.path.isdir(mon):
            os.makedirs(mon)
            open(os.path.join(mon, "tasks"), "w").close()
        for ctrl_name in fs.list_ctrl_groups(self.root):
            group = fs.ctrl_path(self.root, ctrl_name)
            with open(os.path.join(group, "tasks")) as f:
                keep = [t for t in f.read().split() if int(t) not in tids]
            with open(os.path.join(group, "tasks"), "w") as f:
                f.write("".join(t + "\n" for t in keep))
        if ctrl:
            self._add(base, set(tids))
        self._add(mon, set(tids))
        return []


@pytest.fixture
def tree(host: Any) -> Any:
    """Two instances with the agent's monitor groups; U1 holds 60% of L3 0,
    U2 10% of it."""
    size = host.topo.l3[0].size
    qemus = {}
    for uuid, name, share in ((U1, "instance-1", 0.6), (U2, "instance-2", 0.1)):
        qemus[uuid] = host.start_qemu(name, extra_threads=1)
        path = os.path.join(host.resctrl, "mon_groups", PREFIX + uuid)
        host.ops.mkdir(path)
        set_value(path, 0, "llc_occupancy", int(size * share))
    host.instances = [GuardInstance(U1, "instance-1"), GuardInstance(U2, "instance-2")]
    host.qemu_of = qemus
    return host


def guard(h: Any, ops: TreeCatOps, **kw: Any) -> Guard:
    pol = policy.Options(cap_after=1, release_after=1, **kw.pop("policy", {}))
    opts = GuardOptions(resctrl_root=h.resctrl, sysfs_root=h.sysfs, pid_dir=h.pid_dir,
                        lock_file=os.path.join(h.root, "guard.lock"), policy=pol,
                        **{"dry_run": False, **kw})
    return Guard(opts, ops, lambda: h.instances)


def test_a_cap_moves_threads_and_reports_it(tree: Any) -> None:
    ops = TreeCatOps(tree.resctrl)
    r = guard(tree, ops).cycle()
    assert [(a.kind, a.uuid, a.share, a.domains, a.done) for a in r.actions] == [
        ("cap", U1, 25, (0,), True)]
    assert ops.calls == [("mkdir", CAP), ("schemata", CAP), ("move", f"{CAP}:{U1}")]
    assert fs.read_tasks(os.path.join(tree.resctrl, CAP)) == set(tree.qemu_of[U1].tids)
    # 5 of the 20 ways, every domain
    with open(os.path.join(tree.resctrl, CAP, "schemata")) as f:
        assert f.read() == "L3:0=1f;1=1f\n"
    assert r.capped == 1 and r.allocation == {U1: 25.0, U2: 100.0}


def test_a_refused_schemata_removes_the_group_it_made(tree: Any) -> None:
    ops = TreeCatOps(tree.resctrl)
    ops.schemata_error = "The mask 1f has non-consecutive 1-bits"
    r = guard(tree, ops).cycle()
    assert r.actions == () and r.capped == 0
    assert ops.calls == [("mkdir", CAP), ("schemata", CAP), ("rmdir", CAP)]
    assert [x.uuid for x in r.refusals] == [U1]
    assert "non-consecutive 1-bits; group removed" in r.refusals[0].reason
    assert fs.list_ctrl_groups(tree.resctrl) == [""]


def test_a_refused_monitor_group_leaves_no_cap_group(tree: Any) -> None:
    ops = TreeCatOps(tree.resctrl)
    ops.mon_errno = errno.ENOSPC
    r = guard(tree, ops).cycle()
    assert r.actions == ()
    assert r.refusals[0].reason == f"cannot move into {CAP}: Out of RMIDs (No space left " \
                                   "on device)"
    assert ops.calls[-1] == ("rmdir", CAP)
    assert fs.list_ctrl_groups(tree.resctrl) == [""]


def test_out_of_closids_is_a_refusal_with_the_kernels_text(tree: Any) -> None:
    ops = TreeCatOps(tree.resctrl)
    ops.mkdir_errno = errno.ENOSPC
    r = guard(tree, ops).cycle()
    assert [(x.uuid, x.reason) for x in r.refusals] == [
        (U1, f"cannot make control group {CAP}: Out of CLOSIDs")]
    assert ops.calls == [("mkdir", CAP)]


def test_no_monitor_group_no_data_no_decision(tree: Any) -> None:
    for uuid in (U1, U2):
        tree.ops.rmdir(os.path.join(tree.resctrl, "mon_groups", PREFIX + uuid))
    ops = TreeCatOps(tree.resctrl)
    g = guard(tree, ops)
    for _ in range(5):
        assert g.cycle().actions == ()
    assert ops.calls == []


def test_an_exempt_instance_is_never_capped(tree: Any) -> None:
    tree.instances[0] = GuardInstance(U1, "instance-1", exempt=True)
    ops = TreeCatOps(tree.resctrl)
    assert guard(tree, ops).cycle().actions == ()
    assert ops.calls == []


def test_dry_run_reports_and_calls_nothing(tree: Any) -> None:
    ops = TreeCatOps(tree.resctrl)
    g = guard(tree, ops, dry_run=True)
    for _ in range(2):  # said again each time the streak completes
        r = g.cycle()
        assert [(a.kind, a.uuid, a.done) for a in r.actions] == [("cap", U1, False)]
    assert ops.calls == [] and r.capped == 0


def test_release_moves_back_and_removes_the_group(tree: Any) -> None:
    ops = TreeCatOps(tree.resctrl)
    g = guard(tree, ops)
    g.cycle()
    set_value(os.path.join(tree.resctrl, CAP, "mon_groups", PREFIX + U1), 0,
              "llc_occupancy", 0)
    set_value(os.path.join(tree.resctrl, "mon_groups", PREFIX + U1), 0, "llc_occupancy", 0)
    r = g.cycle()
    assert [(a.kind, a.uuid) for a in r.actions] == [("release", U1)]
    assert ops.calls[-2:] == [("move", f":{U1}"), ("rmdir", CAP)]
    assert fs.list_ctrl_groups(tree.resctrl) == [""]
    assert r.capped == 0 and r.allocation[U1] == 100.0


def test_each_action_carries_its_instances_project_also_once_it_left(tree: Any) -> None:
    p1, p2 = "6f0e3c3cc0a34f0a9e3b4a7c1d2e5f60", "9a8b7c6d5e4f40312a1b0c9d8e7f6a50"
    tree.instances = [GuardInstance(U1, "instance-1", project_id=p1),
                      GuardInstance(U2, "instance-2", project_id=p2)]
    g = guard(tree, TreeCatOps(tree.resctrl))
    assert [(a.kind, a.uuid, a.project_id) for a in g.cycle().actions] == [("cap", U1, p1)]
    tree.instances = tree.instances[1:]  # stopped or deleted: listed no more
    assert [(a.kind, a.uuid, a.project_id) for a in g.cycle().actions] == [
        ("release", U1, p1)]


def test_the_guard_lock_admits_one_guard(tmp_path: Any) -> None:
    path = str(tmp_path / "run" / "guard.lock")
    first = GuardLock(path).acquire()
    try:
        with open(path) as f:
            assert f.read() == f"{os.getpid()}\n"
        with pytest.raises(GuardBusy, match=f"pid {os.getpid()} holds"):
            GuardLock(path).acquire()
    finally:
        first.release()
    GuardLock(path).acquire().release()  # free again once released


def test_a_cdp_host_gets_code_and_data_lines(tree: Any) -> None:
    """With ``-o cdp`` the schemata has L3CODE/L3DATA lines and the mask
    info sits in info/L3DATA; the cap writes both, the same way."""
    info = os.path.join(tree.resctrl, "info")
    os.rename(os.path.join(info, "L3"), os.path.join(info, "L3DATA"))
    with open(os.path.join(tree.resctrl, "schemata"), "w") as f:
        f.write("L3CODE:0=fffff;1=fffff\nL3DATA:0=fffff;1=fffff\n")
    r = guard(tree, TreeCatOps(tree.resctrl)).cycle()
    assert [a.kind for a in r.actions] == ["cap"]
    with open(os.path.join(tree.resctrl, CAP, "schemata")) as f:
        assert f.read() == "L3CODE:0=1f;1=1f\nL3DATA:0=1f;1=1f\n"
    assert r.allocation[U1] == 25.0


def adopted_with_every_way(tree: Any) -> TreeCatOps:
    """A cap group left by a guard that died between its mkdir and its
    schemata write (a new group has every way), U1's threads in it."""
    ops = TreeCatOps(tree.resctrl)
    ops.make_ctrl_group(CAP)
    ops.move_threads(CAP, U1, "instance-1", list(tree.qemu_of[U1].tids))
    with open(os.path.join(tree.resctrl, CAP, "schemata")) as f:
        assert f.read().strip() == "L3:0=fffff;1=fffff"
    ops.calls.clear()
    return ops


def test_an_adopted_cap_group_gets_the_caps_mask_back(
        tree: Any, caplog: pytest.LogCaptureFixture) -> None:
    ops = adopted_with_every_way(tree)
    g = guard(tree, ops)
    r = g.cycle()
    assert ops.calls == [("schemata", CAP)]
    with open(os.path.join(tree.resctrl, CAP, "schemata")) as f:
        assert f.read() == "L3:0=1f;1=1f\n"
    assert f"cap group {CAP} has 'L3:0=fffff;1=fffff', not the 25% cap's " \
           "'L3:0=1f;1=1f': rewriting it" in caplog.text
    assert r.capped == 1 and r.allocation[U1] == 25.0 and r.errors == ()
    assert fs.read_tasks(os.path.join(tree.resctrl, CAP)) == set(tree.qemu_of[U1].tids)
    ops.calls.clear()
    g.cycle()  # right now: one read, no write
    assert ("schemata", CAP) not in ops.calls


def test_a_refused_rewrite_does_not_count_its_members_as_capped(tree: Any) -> None:
    ops = adopted_with_every_way(tree)
    ops.schemata_error = "Mask out of range"
    r = guard(tree, ops).cycle()
    assert ops.calls == [("schemata", CAP)]
    assert r.capped == 0 and r.allocation[U1] == 100.0  # what the group reads
    assert r.errors == (f"cap group {CAP} has 'L3:0=fffff;1=fffff', not the 25% cap's "
                        "'L3:0=1f;1=1f', and its rewrite was refused: Mask out of range",)
    assert r.refusals == () and r.actions == ()


def test_a_dry_run_says_the_mask_is_wrong_and_writes_nothing(tree: Any) -> None:
    ops = adopted_with_every_way(tree)
    r = guard(tree, ops, dry_run=True).cycle()
    assert ops.calls == [] and r.capped == 0
