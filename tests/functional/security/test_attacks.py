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
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ceilometer_cmt.backends.perf import pmu
from ceilometer_cmt.privsep.perf_registry import to_wire
from ceilometer_cmt.simulator import Simulator
from ceilometer_cmt.testing.fakehost import StandInQemu
from tests.support import paths
from tests.support.as_user import User, kill_user_processes, public_workdir, run_as, throwaway_user
from tests.support.daemon_stand import (
    CONTEXT,
    HELPER,
    helper_command,
    missing_reason,
    privsep_daemons,
    render_sudoers,
    wait_no_daemons,
    write_daemon_config,
)

_reason = missing_reason()
pytestmark = pytest.mark.skipif(_reason is not None, reason=str(_reason))

ATTACKER = Path(__file__).with_name("attacker.py")
SOFTWARE = str(paths.SOFTWARE)
UUID1 = "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab"
UUID2 = "0b8f3c1e-2d4a-4b6c-9e7f-fedcba987654"
PREFIX = "ceilometer-"
ASSIGNMENTS = "mbm_L3_assignments"
REFUSED = "PermissionError: refused by the ceilometer-cmt privsep daemon, rule "
#: refusals that carry an errno the agent tells apart (a malformed assignment
#: line is EINVAL, as the kernel answers one)
REFUSED_AS = {"assignments": "OSError: [Errno 22] refused by the ceilometer-cmt privsep "
                             "daemon, rule "}


@dataclass
class Stand:
    work: str
    sim: Simulator
    conf: str
    pid_dir: str
    victim: str
    logs: str
    qemus: list[StandInQemu]
    user: User

    @property
    def resctrl(self) -> str:
        return self.sim.mountpoint


def _victims(work: str) -> str:
    """Root-only files and directories an escaped write, mkdir or rmdir would hit."""
    victim = os.path.join(work, "victim")
    os.mkdir(victim, 0o700)
    for name, text in (("secret", "root only\n"), ("tasks", "keep\n")):
        path = os.path.join(victim, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(path, 0o600)
    os.mkdir(os.path.join(victim, PREFIX + "victim"), 0o755)
    os.mkdir(os.path.join(victim, "mon_groups"), 0o755)
    return victim


@pytest.fixture(scope="module")
def stand() -> Iterator[Stand]:
    with public_workdir("cmt-security-") as work:
        pid_dir, etc, logs = (os.path.join(work, d) for d in ("run", "etc", "logs"))
        for d in (pid_dir, etc, logs):
            os.mkdir(d, 0o755)
        victim = _victims(work)
        # logging options in the daemon's config: the helper must read none of them
        log_conf = os.path.join(etc, "logging.conf")
        with open(log_conf, "w", encoding="utf-8") as f:
            f.write(textwrap.dedent(f"""\
                [loggers]
                keys = root
                [handlers]
                keys = file
                [formatters]
                keys =
                [logger_root]
                handlers = file
                [handler_file]
                class = FileHandler
                args = ('{logs}/from-log-config.log',)
            """))
        sim = Simulator(os.path.join(work, "resctrl"), "amd-abmc").start()
        qemus: list[StandInQemu] = []
        try:
            for name in ("instance-00000001", "instance-00000002"):
                qemus.append(StandInQemu(name, pid_dir, extra_threads=2).start())
            conf = write_daemon_config(
                os.path.join(etc, "privsep.conf"), resctrl_root=sim.mountpoint,
                pid_dir=pid_dir, sysfs_root=SOFTWARE,
                extra=f"[DEFAULT]\nlog_dir = {logs}\nlog_file = daemon.log\n"
                      f"log_config_append = {log_conf}\ndebug = true\n")
            with throwaway_user(work, "cmtsec", sudoers=lambda u: render_sudoers(
                    u.name, conf, u.tmp)) as user:
                yield Stand(work, sim, conf, pid_dir, victim, logs, qemus, user)
        finally:
            for q in qemus:
                q.stop()
            sim.stop()


def _snapshot(*roots: str) -> dict[str, tuple[Any, ...]]:
    """Every entry below ``roots``: type, mode, owner, content hash or link target."""
    out: dict[str, tuple[Any, ...]] = {}
    for top in roots:
        for dirpath, dirnames, filenames in os.walk(top):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                if os.path.islink(path):
                    body: object = os.readlink(path)
                elif os.path.isfile(path):
                    with open(path, "rb") as f:
                        body = hashlib.sha256(f.read()).hexdigest()
                else:
                    body = None
                out[path] = (st.st_mode, st.st_uid, st.st_gid, body)
    return out


def _mount_state(resctrl: str) -> dict[str, Any]:
    """Groups on the mount and what they hold, our own prefix left out."""
    out: dict[str, Any] = {}
    for ctrl in [""] + sorted(os.listdir(resctrl)):
        base = os.path.join(resctrl, ctrl)
        if ctrl in ("info", "mon_groups", "mon_data") or not os.path.isdir(base):
            continue
        # the default group's tasks are every other task on the host: they come and go
        for f in ("tasks", "schemata", ASSIGNMENTS) if ctrl else ("schemata", ASSIGNMENTS):
            out[f"{ctrl}/{f}"] = _read(os.path.join(base, f))
        for mon in sorted(os.listdir(os.path.join(base, "mon_groups"))):
            if not mon.startswith(PREFIX):
                for f in ("tasks", ASSIGNMENTS):
                    out[f"{ctrl}/mon_groups/{mon}/{f}"] = _read(
                        os.path.join(base, "mon_groups", mon, f))
    return out


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii") as fh:
            return fh.read()
    except OSError as e:  # mbm_L3_assignments outside mbm_event mode: EINVAL
        return f"errno {e.errno}"


@pytest.fixture(scope="module")
def attack(stand: Stand) -> Iterator[dict[str, Any]]:
    """Run the attacker once; yields its results with the before/after states."""
    res = stand.resctrl
    q1, q2 = stand.qemus
    # other tools' groups on the mount: pqos's monitor group holding a thread of
    # the second guest, libvirt's <cachetune> control group with its own monitor
    os.mkdir(os.path.join(res, "mon_groups", "pqos-1"))
    foreign_tid = q2.tids[-1]
    with open(os.path.join(res, "mon_groups", "pqos-1", "tasks"), "w") as f:
        f.write(f"{foreign_tid}\n")
    os.mkdir(os.path.join(res, "qemu-9-vcpus"))
    os.mkdir(os.path.join(res, "qemu-9-vcpus", "mon_groups", "libvirt-mon"))
    # mkdir gave each of them total and local in both domains: the 8 counters of a
    # domain are gone with the default group's. libvirt's groups give theirs back,
    # pqos keeps its own: 4 free per domain for the attacker's two groups
    for group in ("qemu-9-vcpus", "qemu-9-vcpus/mon_groups/libvirt-mon"):
        with open(os.path.join(res, group, ASSIGNMENTS), "w", encoding="ascii") as f:
            f.write("mbm_total_bytes:*=_\nmbm_local_bytes:*=_\n")
    before = _snapshot(stand.victim, stand.logs, stand.pid_dir), _mount_state(res)
    events = [list(to_wire(pmu.discover(SOFTWARE).spec(n)))
              for n in pmu.KNOWN_EVENTS]
    facts = {
        "helper_command": helper_command(stand.conf), "resctrl": res, "victim": stand.victim,
        "uuid1": UUID1, "uuid2": UUID2, "simulator_pid": stand.sim.pid, "events": events,
        "qemu1": {"domain": q1.domain_name, "pid": q1.pid, "tids": list(q1.tids)},
        "qemu2": {"domain": q2.domain_name, "pid": q2.pid, "tids": list(q2.tids),
                  "foreign_tid": foreign_tid},
    }
    try:
        run = run_as(stand.user, [sys.executable, str(ATTACKER), json.dumps(facts)],
                     stand.work, timeout=600, reach=[str(ATTACKER)])
        left = wait_no_daemons(stand.user.tmp)
    finally:
        _kill(stand.user)
    assert run.returncode == 0, run.stderr[-4000:]
    assert not left, f"privsep daemon(s) outlived their client: {left}"
    results = json.loads(run.stdout.strip().splitlines()[-1])
    after = _snapshot(stand.victim, stand.logs, stand.pid_dir), _mount_state(res)
    yield {"results": results, "before": before, "after": after, "stderr": run.stderr}


def _kill(user: User) -> None:
    kill_user_processes(user.name)


def test_the_daemon_still_does_its_job(attack: dict[str, Any], stand: Stand) -> None:
    r = attack["results"]
    assert (r["ok_mkdir"], r["ok_tasks"], r["ok_mkdir_ctrl"]) == ("done", [], "done"), r
    assert (r["ok_rmdir_ctrl"], r["ok_rmdir"]) == ("done", "done"), r
    assert r["perf_ok"] == 3, r["perf_ok"]
    # an MBM counter assignment on the amd-abmc simulator, read back from its file
    assert (r["ok_assign_release"], r["ok_assign"]) == ([], []), r
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
    # in use when the flood began: default, qemu-9-vcpus, pqos-1, libvirt-mon and
    # the attacker's own two groups
    assert flood["made"] == total - reserve - 6, flood
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
