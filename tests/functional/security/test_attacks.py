"""A hostile agent against the privsep daemon: every attack refused, nothing
outside our groups changed.

Set up as a deployment is: a throwaway unprivileged user, the shipped sudoers
rule filled in (``ceilometer-cmt-privsep-helper`` with the daemon's own
root-owned config, nothing else), the daemon started through it by
oslo.privsep; a root-owned simulator mount stands in for resctrl
(``allow_simulator = true`` in that daemon's own config only), a Linux 6.18
AMD ABMC host (preset ``amd-abmc``: ``mbm_event`` mode, 8 counters per domain). The user runs
tests/functional/security/attacker.py, which calls the daemon's entrypoints with paths,
odd names, foreign groups, other processes' threads, a fake qemu, raw perf
events, MBM counter assignment lines that name other files, events or groups,
a tmpfs in its own user namespace, assignments that would take the MBM
counters kept for other tools, and 10,000 mkdirs. Checksums,
modes and listings of root-owned victim files and directories, and every
group the daemon does not own on the mount, are the same afterwards.

Needs root, FUSE (Debian fuse3), sudo, useradd/userdel, unshare and setpriv.
"""


from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.functional.security.stand import (
    PREFIX,
    REFUSED,
    REFUSED_AS,
    UUID2,
    Stand,
    _kill,
)
from tests.support.as_user import run_as
from tests.support.daemon_stand import CONTEXT, HELPER, missing_reason, privsep_daemons

_reason = missing_reason()
pytestmark = pytest.mark.skipif(_reason is not None, reason=str(_reason))


def test_the_daemon_still_does_its_job(attack: dict[str, Any], stand: Stand) -> None:
    r = attack["results"]
    assert (r["ok_mkdir"], r["ok_tasks"], r["ok_mkdir_ctrl"]) == ("done", [], "done"), r
    assert (r["ok_rmdir_ctrl"], r["ok_rmdir"]) == ("done", "done"), r
    assert r["perf_ok"] == 3, r["perf_ok"]
    # an MBM counter assignment on the amd-abmc simulator, read back from its file
    assert (r["ok_assign_release"], r["ok_assign"]) == ([], []), r
    # the agent learns the reserve it must plan within, through the real channel
    assert r["ok_kept_free"] == [[0, 2], [1, 2]], r
    assert r["ok_assign_file"] == "mbm_total_bytes:0=e;1=e\nmbm_local_bytes:0=e;1=_\n", r
    assert "Running privsep helper: ['sudo', " in attack["stderr"]


NAMES = ["path_as_ctrl", "path_as_uuid", "ctrl_symlinked_mon_groups", "ctrl_symlinked_relative",
         "rmdir_escape", "rmdir_newline", "rmdir_victim", "rmdir_ctrl_itself", "domain_escape",
         "userns_ctrl", "userns_rmdir", "userns_tasks", "userns_assign",
         "assign_path_as_ctrl", "assign_path_as_uuid", "assign_foreign_group",
         "assign_foreign_group_prefixed", "assign_foreign_ctrl_path", "assign_escape_uuid",
         "assign_victim"]
ASSIGN_LINES = ["assign_other_file", "assign_tasks_line", "assign_foreign_event",
                "assign_config_event", "assign_newline_injection", "assign_star_tail",
                "assign_huge_line", "assign_many_lines", "assign_nul", "assign_unicode_digit",
                "assign_negative_domain", "assign_not_a_list", "assign_not_text",
                "assign_nothing"]
EXPECTED = {
    **{f"ctrl_{i}": "names" for i in range(14)},
    **{f"uuid_{i}": "names" for i in range(8)},
    **{label: "names" for label in NAMES},
    "rmdir_foreign": "prefix", "rmdir_foreign_ctrl": "prefix",
    **{label: "threads" for label in ("tid_pid1", "tid_sim", "tid_self", "tid_negative",
                                      "tid_zero", "tid_huge", "tid_string", "tid_bool",
                                      "tid_other_guest", "tid_many",
                                      "perf_other_guest_thread")},
    "tid_foreign_group": "foreign-group",
    "tasks_fake_qemu": "threads", "perf_fake_qemu": "qemu", "perf_pid1": "qemu",
    "perf_raw_event": "perf-event",
    **{label: "assignments" for label in ASSIGN_LINES},
}


def test_every_attack_is_refused_naming_its_rule(attack: dict[str, Any]) -> None:
    r = attack["results"]
    expected = dict(EXPECTED)
    if str(r["userns"]).startswith("unavailable"):  # test_the_user_namespace_attack_ran says so
        expected = {k: v for k, v in expected.items() if not k.startswith("userns_")}
    wrong = {label: r.get(label) for label, rule in expected.items()
             if not str(r.get(label)).startswith(REFUSED_AS.get(rule, REFUSED) + rule + ":")}
    assert not wrong, json.dumps(wrong, indent=1)
    assert r["domain_unknown"].startswith("InstanceGone: no pidfile"), r["domain_unknown"]


def test_the_user_namespace_attack_ran(attack: dict[str, Any]) -> None:
    r = attack["results"]["userns"]
    if r.startswith("unavailable"):
        pytest.skip(f"unshare -Urm does not work for an unprivileged user here: {r}")
    assert r == "ready"


def test_the_rmid_reserve_holds_against_a_flood(attack: dict[str, Any], stand: Stand) -> None:
    flood = attack["results"]["flood"]
    info = Path(stand.resctrl) / "info"
    total = int((info / "L3_MON" / "num_rmids").read_text())
    reserve = int((info / "L3" / "num_closids").read_text())
    # in use when the flood began: default, qemu-9-vcpus, pqos-1, libvirt-mon, the
    # <cachetune> group and the attacker's own two groups
    assert flood["made"] == total - reserve - 7, flood
    assert flood["other"] == [], flood
    # as the kernel's own "no free RMID" (ENOSPC), so the agent reports it as such
    assert len(flood["refusals"]) == 1 and flood["refusals"][0].startswith(
        "OSError 28: refused by the ceilometer-cmt privsep daemon, rule rmid-reserve:"), flood
    assert f"{reserve} are kept in reserve" in flood["refusals"][0]
    assert attack["results"]["flood_removed"] == flood["made"]
    # what the reserve is for: root (libvirt) can still make control groups
    made = os.path.join(stand.resctrl, "qemu-10-vcpus")
    os.mkdir(made)
    os.rmdir(made)


RESERVE_REFUSED = ("OSError: [Errno 28] refused by the ceilometer-cmt privsep daemon, rule "
                   "mbm-counter-reserve: ")


def test_the_counter_reserve_holds_against_a_grab(attack: dict[str, Any], stand: Stand) -> None:
    """8 counters per domain: 2 kept (an eighth, at least 2). Before the grab
    the attacker's first group holds total in both domains and local in
    domain 0, its second group nothing (its mkdir took the reserve, which the
    daemon gave back): 2 free in domain 0, 3 in domain 1."""
    r = attack["results"]
    grab = r["counters_grab"]
    # what the group holds costs nothing, and one counter of domain 1 was above
    # the reserve: those pass
    assert {k: v for k, v in grab.items() if k.startswith("default/")} == dict.fromkeys(
        (f"default/{ev}:{d}" for ev in ("mbm_total_bytes", "mbm_local_bytes")
         for d in ("0", "1", "*")), []), grab
    # everything else would take the reserve: refused with ENOSPC, naming it
    taken = {k: v for k, v in grab.items() if k.startswith("qemu-9-vcpus/")}
    assert len(taken) == 6, grab
    for label, text in [*taken.items(), ("counters_grab_all", r["counters_grab_all"]),
                        ("counters_release_then_grab", r["counters_release_then_grab"])]:
        assert str(text).startswith(RESERVE_REFUSED), (label, text)
        assert "kept free for other resctrl users" in text, (label, text)
        assert "([cmt_privsep] mbm_counter_reserve) in domain " in text, (label, text)
        assert "(2 free, 2 kept)" in text, (label, text)
    assert r["counters_after_grab"] == "0=2;1=2\n"
    # a flood of mkdirs: the kernel gave each group counters, the daemon gave back
    # those past the reserve
    assert r["flood_counters"] == "0=2;1=2\n"
    # the attacker's groups are gone: their counters too
    avail = Path(stand.resctrl) / "info" / "L3_MON" / "available_mbm_cntrs"
    assert avail.read_text() == "0=4;1=4\n"


def test_nothing_outside_our_groups_changed(attack: dict[str, Any], stand: Stand) -> None:
    files_before, mount_before = attack["before"]
    files_after, mount_after = attack["after"]
    assert files_after == files_before
    assert mount_after == mount_before
    assert os.listdir(stand.logs) == []  # no logging option of the config was honoured
    ours = [m for m in os.listdir(os.path.join(stand.resctrl, "mon_groups"))
            if m.startswith(PREFIX)]
    assert ours == []
    assert os.listdir(stand.user.tmp) == []  # privsep's socket directories went


def test_sudo_allows_no_other_helper_config_or_context(stand: Stand) -> None:
    sock = ["--privsep_sock_path", os.path.join(stand.user.tmp, "tmpab_1", "privsep.sock")]
    evil = os.path.join(stand.user.tmp, "evil.conf")
    cases = [
        ([HELPER, "--config-file", stand.conf, "--privsep_context", CONTEXT, *sock], True),
        ([HELPER, "--config-file", evil, "--privsep_context", CONTEXT, *sock], False),
        ([HELPER, "--privsep_context", CONTEXT, *sock], False),
        ([HELPER, "--config-file", stand.conf, "--privsep_context",
          "ceilometer.privsep.sys_admin_pctxt", *sock], False),
        ([HELPER, "--config-file", stand.conf, "--config-file", evil, "--privsep_context",
          CONTEXT, *sock], False),
        ([os.path.join(os.path.dirname(HELPER), "privsep-helper"), "--config-file",
          stand.conf, "--privsep_context", CONTEXT, *sock], False),
    ]
    for argv, allowed in cases:
        check = subprocess.run(["sudo", "-l", "-U", stand.user.name, *argv],
                               capture_output=True, text=True, check=False)
        assert (check.returncode == 0) == allowed, (argv, check)
    # and for real, as the user: a second daemon on a config of its own is refused
    with open(evil, "w", encoding="utf-8") as f:
        f.write(f"[cmt]\nresctrl_root = {stand.victim}\n")
    try:
        r = run_as(stand.user, ["sudo", "-n", HELPER, "--config-file", evil,
                                "--privsep_context", CONTEXT, *sock], stand.work)
    finally:
        os.unlink(evil)
        _kill(stand.user)
    assert r.returncode != 0 and "a password is required" in r.stderr, r
    assert not privsep_daemons(stand.user.tmp)


def test_a_simulator_mount_not_made_by_root_is_refused(stand: Stand, tmp_path: Path) -> None:
    """The mount check itself: the simulator's subtype alone is not enough; the
    mount must have been made by root (user_id=0)."""
    from ceilometer_cmt.linux import beneath
    from ceilometer_cmt.privsep.resctrl_root import ResctrlRoot
    from ceilometer_cmt.privsep.rules import QemuRule

    real_mount_of = beneath.mount_of

    def mount_of(fd: int) -> beneath.MountInfo:
        m = real_mount_of(fd)
        opts = tuple(f"user_id={stand.user.uid}" if o == "user_id=0" else o
                     for o in m.super_options)
        return beneath.MountInfo(m.mount_id, m.mount_point, m.fstype, m.source, opts)

    root = ResctrlRoot(stand.resctrl, PREFIX, QemuRule(stand.pid_dir), allow_simulator=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(beneath, "mount_of", mount_of)
        with pytest.raises(PermissionError, match="rule mount.*not mounted by root"):
            root.mkdir("", UUID2)
    root.mkdir("", UUID2)  # the real mount: made by root
    root.rmdir("", PREFIX + UUID2)
    root.close()
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(os.path.join(stand.resctrl, "mon_groups", PREFIX + UUID2))
