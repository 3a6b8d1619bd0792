"""The stand the attack tests share: a throwaway user, the daemon's own
config, the shipped sudoers rule filled in, a root-owned simulator mount
(preset ``amd-abmc``, with a scenario giving its L3 Intel's CAT rules:
``min_cbm_bits`` 2, no sparse masks), two stand-in qemus, other tools'
groups on the mount (pqos's monitor group, libvirt ``<cachetune>`` control
groups); and one run of tests/functional/security/attacker.py as that user,
with the state of everything outside our groups before and after.

Fixtures of package scope (re-exported by conftest.py): test_attacks.py and
test_cat_attacks.py read the same run.
"""

from __future__ import annotations

import hashlib
import json
import os
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
    helper_command,
    render_sudoers,
    wait_no_daemons,
    write_daemon_config,
)

ATTACKER = Path(__file__).with_name("attacker.py")
SOFTWARE = str(paths.SOFTWARE)
UUID1 = "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab"
UUID2 = "0b8f3c1e-2d4a-4b6c-9e7f-fedcba987654"
PREFIX = "ceilometer-"
ASSIGNMENTS = "mbm_L3_assignments"
#: the simulator scenario: 16 ways, at least 2 per mask, contiguous masks only
CAT_RULES = {"min_cbm_bits": 2, "sparse_masks": False}
#: a libvirt ``<cachetune>`` control group, one vCPU thread of the second guest in it
CACHETUNE = "qemu-3-instance-x-vcpus_0"
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


@pytest.fixture(scope="package")
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
        # Intel's CAT rules on the ABMC host, so that the daemon's own checks
        # of schemata lines (contiguous masks, min_cbm_bits) are attacked
        sim = Simulator(os.path.join(work, "resctrl"), "amd-abmc", CAT_RULES).start()
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


@pytest.fixture(scope="package")
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
    # libvirt's <cachetune> for a vCPU of the second guest: its own ways
    cachetune_tid = q2.tids[1]
    os.mkdir(os.path.join(res, CACHETUNE))
    with open(os.path.join(res, CACHETUNE, "schemata"), "w", encoding="ascii") as f:
        f.write("L3:0=c000;1=c000\n")
    with open(os.path.join(res, CACHETUNE, "tasks"), "w", encoding="ascii") as f:
        f.write(f"{cachetune_tid}\n")
    os.mkdir(os.path.join(res, "qemu-9-vcpus", "mon_groups", "libvirt-mon"))
    # mkdir gave each of them total and local in both domains: the 8 counters of a
    # domain are gone with the default group's. libvirt's groups give theirs back,
    # pqos keeps its own: 4 free per domain for the attacker's two groups
    for group in ("qemu-9-vcpus", "qemu-9-vcpus/mon_groups/libvirt-mon", CACHETUNE):
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
                  "foreign_tid": foreign_tid, "cachetune_tid": cachetune_tid},
        "cachetune": CACHETUNE,
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

