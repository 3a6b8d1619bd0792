"""The agent as an unprivileged user, its resctrl changes through oslo.privsep.

A throwaway system user runs ``ceilometer-cmt poll`` (ceilometer's real
polling manager, real discovery over a libvirt test-driver node) against the
FUSE resctrl simulator, which, like the kernel, refuses mkdir and ``tasks``
writes to anybody but root. ``[cmt] privsep = always``: oslo.privsep starts
``ceilometer-cmt-privsep-helper`` through sudo with the daemon's own config,
as deployments do (the shipped sudoers rule, filled in, allows exactly that
command). Everything the test makes is removed, pass or fail: the user, the
sudoers file, the mount, the stand-in qemus, the files. The attacks on the
daemon are in tests/functional/security/.

Needs root, FUSE (Debian fuse3), sudo and useradd/userdel (Debian sudo, passwd).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from ceilometer_cmt.simulator import Simulator, mount_fstype
from ceilometer_cmt.simulator.topology import get_topology
from ceilometer_cmt.testing.fakehost import (
    FakeInstance,
    StandInQemu,
    make_instances,
    write_node_xml,
)
from tests.support.as_user import (
    VENV_BIN,
    User,
    kill_user_processes,
    public_workdir,
    run_as,
    throwaway_user,
)
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

CLI = os.path.join(VENV_BIN, "ceilometer-cmt")
PREFIX = "ceilometer-"


_reason = missing_reason()
pytestmark = pytest.mark.skipif(_reason is not None, reason=str(_reason))


@dataclass
class Host:
    work: str  # 0755, readable by the agent's user
    sim: Simulator
    instances: list[FakeInstance]
    qemus: list[StandInQemu]
    node: str
    daemon_conf: str  # the privsep daemon's own config, root-owned

    @property
    def resctrl(self) -> str:
        return self.sim.mountpoint

    def group(self, inst: FakeInstance) -> str:
        return os.path.join(self.resctrl, "mon_groups", PREFIX + inst.uuid)

    def config(self, name: str, privsep_section: str) -> str:
        path = os.path.join(self.work, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(textwrap.dedent(f"""\
                [DEFAULT]
                host = compute-1
                libvirt_uri = test://{self.node}
                [cmt]
                backend = resctrl
                resctrl_root = {self.resctrl}
                sysfs_root = {self.work}/sys
                libvirt_pid_dir = {self.work}/run
                privsep = always
            """) + privsep_section)
        os.chmod(path, 0o644)
        return path


@pytest.fixture
def host() -> Iterator[Host]:
    with public_workdir("cmt-privsep-") as work:
        yield from _host(work)


def _host(work: str) -> Iterator[Host]:
    qemus: list[StandInQemu] = []
    sim = Simulator(os.path.join(work, "resctrl"), "intel-2s", {
        "processes": [{"match": {"cmdline": "guest="}, "timeline": [
            {"t": 0, "occupancy": {0: "3MiB"}, "mbm_total": {0: 1000}, "mbm_local": {0: 10}}]}],
    })
    try:
        get_topology("intel-2s").write_sysfs(os.path.join(work, "sys"))
        instances = make_instances(2)
        node = write_node_xml(os.path.join(work, "node.xml"), instances)
        for inst in instances:
            qemus.append(StandInQemu(inst.domain_name, os.path.join(work, "run"),
                                     extra_threads=1).start())
        sim.start()
        os.mkdir(os.path.join(work, "etc"), 0o755)
        daemon_conf = write_daemon_config(os.path.join(work, "etc", "privsep.conf"),
                                          resctrl_root=sim.mountpoint,
                                          pid_dir=os.path.join(work, "run"))
        yield Host(work, sim, instances, qemus, node, daemon_conf)
    finally:
        with contextlib.suppress(Exception):
            sim.stop()
        pids = [q.proc.pid for q in qemus if q.proc is not None]
        for q in qemus:
            q.stop()
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        mounted = mount_fstype(sim.mountpoint) is not None
        shutil.rmtree(work, ignore_errors=True)
        assert not mounted, "simulator still mounted"
        assert not os.path.exists(work)


@pytest.fixture
def agent_user(host: Host) -> Iterator[User]:
    """A system user made for this test, allowed the plugin's privsep helper only."""
    def rules(user: User) -> str:
        # What a deployment grants the agent's user: ceilometer-cmt-privsep-helper as
        # root with our context only, the daemon's own config file and a socket in the
        # user's TMPDIR (sudo >= 1.9.10 regular expression).
        assert re.fullmatch(r"[A-Za-z0-9_/.-]+", host.work + user.tmp), (host.work, user.tmp)
        return render_sudoers(user.name, host.daemon_conf, user.tmp)

    with throwaway_user(host.work, prefix="cmtps", sudoers=rules) as user:
        yield user


def run_agent_as(user: User, conf: str, cycles: int, cwd: str, marker: str
                 ) -> tuple[subprocess.CompletedProcess[str], dict[int, Any]]:
    """``ceilometer-cmt poll`` as ``user``; checks it ended cleanly, that the
    privsep daemon went with it and that the helper ran through sudo."""
    try:
        agent = run_as(user, [CLI, "poll", "--config-file", conf, "--cycles", str(cycles),
                              "--json"], cwd)
        left = wait_no_daemons(marker)
    finally:
        kill_user_processes(user.name)
    assert agent.returncode == 0, agent.stderr
    assert not left, f"privsep daemon(s) outlived the agent: {left}"
    assert "Traceback" not in agent.stderr, agent.stderr
    assert "Running privsep helper: ['sudo', " in agent.stderr, agent.stderr
    cycles_seen = samples_by_cycle(agent.stdout)
    assert sorted(cycles_seen) == list(range(1, cycles + 1))
    return agent, cycles_seen


def samples_by_cycle(stdout: str) -> dict[int, dict[tuple[str, str], dict[str, Any]]]:
    out: dict[int, dict[tuple[str, str], dict[str, Any]]] = {}
    for line in stdout.splitlines():
        row = json.loads(line)
        key = (row["name"], row["resource_id"])
        assert key not in out.setdefault(row["cycle"], {}), f"duplicate sample {key}"
        out[row["cycle"]][key] = row
    return out


PROBE = """\
import errno, json, os, sys
root = sys.argv[1]
out = {"euid": os.geteuid()}
try:
    os.mkdir(os.path.join(root, "mon_groups", "ceilometer-direct"))
    out["mkdir"] = 0
except OSError as e:
    out["mkdir"] = e.errno
try:
    fd = os.open(os.path.join(root, "tasks"), os.O_WRONLY)
    os.close(fd)
    out["open_tasks"] = 0
except OSError as e:
    out["open_tasks"] = e.errno
print(json.dumps(out))
"""

def test_unprivileged_agent_polls_through_privsep_daemon(host: Host, agent_user: User) -> None:
    work = host.work
    marker = agent_user.tmp  # privsep's socket directory sits there: in the helper's argv
    with open(os.path.join(work, "probe.py"), "w", encoding="utf-8") as f:
        f.write(PROBE)
    # The unprivileged user can read the simulator but not change it, like the kernel's.
    probe = run_as(agent_user, [sys.executable, os.path.join(work, "probe.py"), host.resctrl],
                   work)
    assert probe.returncode == 0, probe.stderr
    assert json.loads(probe.stdout) == {"euid": agent_user.uid, "mkdir": errno.EACCES,
                                        "open_tasks": errno.EACCES}
    assert os.listdir(os.path.join(host.resctrl, "mon_groups")) == []

    # sudo runs the helper for our context only
    other = run_as(agent_user, ["sudo", "-n", HELPER, "--privsep_context",
                                "ceilometer.privsep.sys_admin_pctxt", "--privsep_sock_path",
                                os.path.join(agent_user.tmp, "x", "privsep.sock")], work)
    assert other.returncode != 0 and "a password is required" in other.stderr, other
    sock = ["--privsep_sock_path", os.path.join(agent_user.tmp, "tmpab_1", "privsep.sock")]
    for args, allowed in ((["--config-file", host.daemon_conf], True), ([], False),
                          (["--config-file", f"{work}/ceilometer.conf"], False),
                          (["--config-file", f"{work}/evil.conf"], False)):
        check = subprocess.run(["sudo", "-l", "-U", agent_user.name, HELPER, *args,
                                "--privsep_context", CONTEXT, *sock],
                               capture_output=True, text=True, check=False)
        assert (check.returncode == 0) == allowed, (args, check)
    conf = host.config("ceilometer.conf", textwrap.dedent(f"""\
        [cmt_privsep]
        helper_command = {helper_command(host.daemon_conf)}
    """))
    agent, cycles = run_agent_as(agent_user, conf, 2, work, marker)
    # oslo.privsep ran its helper through sudo and the daemon started
    assert "Spawned new privsep daemon via rootwrap" in agent.stderr, agent.stderr
    second = cycles[2]
    for inst in host.instances:
        occ = second[("cache.occupancy", inst.uuid)]
        assert (occ["type"], occ["unit"]) == ("gauge", "B")
        assert occ["volume"] >= 0
        assert ("memory.bandwidth.total.bytes", inst.uuid) in second
    un = second[("cache.instances.unmonitored", "compute-1")]
    assert un["volume"] == 0
    assert second[("cache.monitors.used", "compute-1")]["volume"] == 3  # default + 2 groups

    # The groups exist (made by the daemon: the user itself got EACCES above)
    # and hold the stand-in qemus' threads.
    assert sorted(os.listdir(os.path.join(host.resctrl, "mon_groups"))) == sorted(
        PREFIX + i.uuid for i in host.instances)
    for inst, qemu in zip(host.instances, host.qemus, strict=True):
        with open(os.path.join(host.group(inst), "tasks"), encoding="ascii") as f:
            assert sorted(int(t) for t in f.read().split()) == sorted(qemu.tids)

    # nothing of privsep's is left in the user's TMPDIR (socket directories)
    assert os.listdir(agent_user.tmp) == []


MISSING_HELPER = "/nonexistent/cmt-privsep-helper"


def test_privsep_unavailable_is_named_once_and_instances_unmonitored(host: Host) -> None:
    """[cmt] privsep = always, the helper cannot start: one clear error naming it,
    every instance unmonitored with that reason, no crash, no group made."""
    conf = host.config("missing.conf", f"[cmt_privsep]\nhelper_command = {MISSING_HELPER}\n")
    agent = subprocess.run([CLI, "poll", "--config-file", conf, "--cycles", "2", "--json"],
                           capture_output=True, text=True, timeout=180, check=False,
                           env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert agent.returncode == 0, agent.stderr
    assert "Traceback" not in agent.stderr, agent.stderr
    errors = [line for line in agent.stderr.splitlines()
              if " ERROR " in line and "ceilometer_cmt" in line]
    assert len(errors) == 1, agent.stderr
    assert MISSING_HELPER in errors[0] and "privsep" in errors[0], errors[0]
    cycles = samples_by_cycle(agent.stdout)
    assert sorted(cycles) == [1, 2]
    for n in (1, 2):
        un = cycles[n][("cache.instances.unmonitored", "compute-1")]
        assert un["volume"] == len(host.instances)
        reasons = un["metadata"]["unmonitored"] if "metadata" in un else None
        assert reasons is None or all("privsep" in r for r in reasons.values())
        assert not [k for k in cycles[n] if k[0] == "cache.occupancy"]
    assert os.listdir(os.path.join(host.resctrl, "mon_groups")) == []
    assert not privsep_daemons(host.work)


def test_guarded_privsep_ops_name_the_missing_helper_once(host: Host, monkeypatch: Any) -> None:
    """The change proposed for runtime.resctrl_ops, in process: [cmt_privsep] of the
    agent's config honoured, one ERROR naming the helper, instances unmonitored
    with that reason over two cycles, the pollsters keep running."""
    from oslo_config import cfg

    from ceilometer_cmt.cmd import poll as pollrun
    from ceilometer_cmt.pollsters import runtime
    from ceilometer_cmt.privsep import daemon_guard as guard
    from ceilometer_cmt.privsep.entrypoints import PrivsepOps, cmt_pctxt

    log = os.path.join(host.work, "agent.log")
    conf = host.config("guarded.conf", f"[cmt_privsep]\nhelper_command = {MISSING_HELPER}\n")
    with open(conf, "a", encoding="utf-8") as f:
        f.write(f"[DEFAULT]\nlog_file = {log}\n")
    guards: list[guard.GuardedOps] = []

    def resctrl_ops(conf: Any, settings: Any) -> guard.GuardedOps:
        guard.configure(conf)
        guards.append(guard.GuardedOps(
            PrivsepOps(settings.resctrl_root, settings.resctrl_group_prefix)))
        return guards[-1]

    monkeypatch.setattr(runtime, "resctrl_ops", resctrl_ops)
    try:
        with pollrun.polling_agent([conf]) as agent:
            cycles = pollrun.run_cycles(agent, 2)
    finally:
        cmt_pctxt.stop()
        cfg.CONF.clear_override("helper_command", group="cmt_privsep")
    with open(log, encoding="utf-8") as f:
        text = f.read()
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if " ERROR ceilometer_cmt" in line]
    assert len(errors) == 1, text
    assert f"helper command '{MISSING_HELPER}' cannot be run" in errors[0], errors[0]
    assert len(guards) == 1 and guards[0].reason is not None
    for samples in cycles:
        un = [s for s in samples if s["counter_name"] == "cache.instances.unmonitored"]
        assert len(un) == 1 and un[0]["counter_volume"] == len(host.instances)
        reasons = un[0]["resource_metadata"]["unmonitored"]
        assert sorted(reasons) == sorted(i.uuid for i in host.instances)
        assert all(r == guards[0].reason for r in reasons.values()), reasons
        assert not [s for s in samples if s["counter_name"] == "cache.occupancy"]
        assert [s["counter_volume"] for s in samples if s["counter_name"] == "cache.size"]
    assert os.listdir(os.path.join(host.resctrl, "mon_groups")) == []
