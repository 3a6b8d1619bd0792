"""The perf backend for an unprivileged agent: counters in the privsep daemon.

A throwaway system user runs ``ceilometer-cmt poll`` with ``[cmt] backend =
perf`` and ``privsep = always`` (``sudo ceilometer-cmt-privsep-helper`` with the
daemon's own config, the shipped sudoers rule, as in test_privsep.py) against a
fixture ``intel_cqm`` PMU whose type is 1 (PERF_TYPE_SOFTWARE: occupancy is
task-clock, total_bytes page-faults, local_bytes context-switches) and real
stand-in qemus owned by root. The user itself gets EACCES from
perf_event_open on them (perf_event_paranoid >= 2, another user's process);
the daemon opens the counters, checks every request against its own sysfs
and procfs, and reads them all in one call per cycle. Everything the test
makes is removed, pass or fail: the user, the sudoers file, the stand-ins,
the daemons, the files.

Needs root, sudo and useradd/userdel (Debian sudo, passwd), util-linux.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from ceilometer_cmt.backends.perf import pmu as perf_pmu
from ceilometer_cmt.privsep.perf_registry import to_wire
from ceilometer_cmt.simulator.topology import get_topology
from ceilometer_cmt.testing.fakehost import (
    FakeInstance,
    StandInQemu,
    make_instances,
    write_node_xml,
)
from tests.functional.privsep.test_daemon import (
    CLI,
    agent_user,  # noqa: F401  (fixture)
    run_agent_as,
    samples_by_cycle,
    wait_no_daemons,
)
from tests.support.as_user import User, kill_user_processes, public_workdir, run_as
from tests.support.daemon_stand import helper_command, missing_reason, write_daemon_config
from tests.support.paths import SOFTWARE

PARANOID = "/proc/sys/kernel/perf_event_paranoid"


def _why_skip() -> str | None:
    reason = missing_reason()
    if reason:
        return reason
    try:
        with open(PARANOID, encoding="ascii") as f:
            paranoid = int(f.read())
    except OSError:
        return f"{PARANOID} is missing (no perf events in this kernel)"
    if paranoid < 2:  # the agent's user could count the stand-ins itself
        return f"perf_event_paranoid is {paranoid}: the test needs >= 2"
    return None


_reason = _why_skip()
pytestmark = pytest.mark.skipif(_reason is not None, reason=str(_reason))


@dataclass
class Host:
    work: str  # 0755, readable by the agent's user
    instances: list[FakeInstance]
    qemus: list[StandInQemu]
    node: str
    daemon_conf: str  # the privsep daemon's own config, root-owned

    @property
    def sysfs(self) -> str:
        return os.path.join(self.work, "sys")

    def config(self, name: str) -> str:
        path = os.path.join(self.work, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(textwrap.dedent(f"""\
                [DEFAULT]
                host = compute-1
                libvirt_uri = test://{self.node}
                [cmt]
                backend = perf
                sysfs_root = {self.sysfs}
                libvirt_pid_dir = {self.work}/run
                privsep = always
                [cmt_privsep]
                helper_command = {helper_command(self.daemon_conf)}
            """))
        os.chmod(path, 0o644)
        return path


@pytest.fixture
def host() -> Iterator[Host]:
    with public_workdir("cmt-perf-privsep-") as work:
        yield from _host(work)


def _host(work: str) -> Iterator[Host]:
    qemus: list[StandInQemu] = []
    try:
        sysfs = os.path.join(work, "sys")
        shutil.copytree(SOFTWARE, sysfs)
        get_topology("intel-2s").write_sysfs(sysfs)
        instances = make_instances(2)
        node = write_node_xml(os.path.join(work, "node.xml"), instances)
        for inst in instances:
            qemus.append(StandInQemu(inst.domain_name, os.path.join(work, "run"),
                                     extra_threads=1, burn=True).start())
        os.mkdir(os.path.join(work, "etc"), 0o755)
        daemon_conf = write_daemon_config(os.path.join(work, "etc", "privsep.conf"),
                                          resctrl_root="/sys/fs/resctrl",
                                          pid_dir=os.path.join(work, "run"), sysfs_root=sysfs)
        yield Host(work, instances, qemus, node, daemon_conf)
    finally:
        pids = [q.proc.pid for q in qemus if q.proc is not None]
        for q in qemus:
            q.stop()
        shutil.rmtree(work, ignore_errors=True)
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        assert not os.path.exists(work)


# As the agent's user, in process: perf_event_open on a root-owned stand-in.
DIRECT = """\
import json, os, sys
from ceilometer_cmt.backends.perf import pmu as perf_pmu
from ceilometer_cmt.backends.perf.counter_fds import Counter
from ceilometer_cmt.backends.perf.syscall import PerfError
pmu = perf_pmu.discover(sys.argv[1])
out = {"euid": os.geteuid()}
for name in sorted(pmu.events):
    try:
        Counter(pmu.spec(name), int(sys.argv[2])).close()
        out[name] = 0
    except PerfError as e:
        out[name] = e.errno
print(json.dumps(out))
"""

# Calls the daemon's perf entrypoints directly, as a compromised agent could.
ATTACK = """\
import json, os, sys
from oslo_config import cfg
from ceilometer_cmt.privsep import entrypoints as privileged
helper, qemu, domain, events = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
cfg.CONF(args=[], project="ceilometer-cmt-test", default_config_files=[])
cfg.CONF.set_override("helper_command", helper, group="cmt_privsep")
results = {}
def attempt(label, fn, *args):
    try:
        results[label] = ["done", fn(*args)]
    except Exception as e:
        results[label] = [type(e).__name__, str(e)]
attempt("good", privileged.perf_open, events, qemu, qemu, domain)
handles = results["good"][1] if results["good"][0] == "done" else []
results["read_len"] = len(privileged.perf_read(handles)) if handles else -1
attempt("cycles", privileged.perf_open, [[0, 0, 0, 0]], qemu, qemu, domain)
attempt("raw_config", privileged.perf_open, [[1, 0x04, 0, 0]], qemu, qemu, domain)
attempt("agent_itself", privileged.perf_open, events, os.getpid(), os.getpid(), domain)
attempt("init", privileged.perf_open, events, 1, 1, domain)
attempt("other_domain", privileged.perf_open, events, qemu, qemu, "instance-other")
attempt("unknown_handle", privileged.perf_read, [12345])
attempt("probe_cycles", privileged.perf_probe, [[0, 0, 0, 0]])
attempt("close", privileged.perf_close, handles)
attempt("read_closed", privileged.perf_read, handles)
print(json.dumps(results))
"""


def test_unprivileged_agent_counts_through_privsep_daemon(host: Host,
                                                          agent_user: User) -> None:  # noqa: F811
    work = host.work
    marker = agent_user.tmp  # privsep's socket directory sits there: in the helper's argv
    for name, text in (("direct.py", DIRECT), ("attack.py", ATTACK)):
        with open(os.path.join(work, name), "w", encoding="utf-8") as f:
            f.write(text)
    qemu = host.qemus[0]

    # The user may not count the root-owned stand-in itself.
    direct = run_as(agent_user, [sys.executable, os.path.join(work, "direct.py"), host.sysfs,
                                 str(qemu.pid)], work)
    assert direct.returncode == 0, direct.stderr
    assert json.loads(direct.stdout) == {"euid": agent_user.uid, "llc_occupancy": 13,
                                         "local_bytes": 13, "total_bytes": 13}  # EACCES

    conf = host.config("ceilometer.conf")
    agent, cycles = run_agent_as(agent_user, conf, 3, work, marker)
    assert "backend perf" in agent.stderr, agent.stderr

    for n in (1, 2, 3):
        assert cycles[n][("cache.instances.unmonitored", "compute-1")]["volume"] == 0
        # one RMID per opened thread, as intel_cqm would use
        used = cycles[n][("cache.monitors.used", "compute-1")]["volume"]
        assert used == sum(len(q.tids) for q in host.qemus)
    for inst in host.instances:
        occ = [cycles[n][("cache.occupancy", inst.uuid)] for n in (2, 3)]
        assert [(o["type"], o["unit"]) for o in occ] == [("gauge", "B")] * 2
        # task-clock of the burning stand-in: it grows from cycle to cycle
        assert occ[1]["volume"] > occ[0]["volume"] > 0, occ
        assert ("memory.bandwidth.total.bytes", inst.uuid) in cycles[3]
        assert ("memory.bandwidth.local.bytes", inst.uuid) in cycles[3]

    # The daemon judges every request by its own PMU and procfs.
    events = [list(to_wire(perf_pmu.discover(host.sysfs).spec(n)))
              for n in perf_pmu.KNOWN_EVENTS]
    try:
        attack = run_as(agent_user, [sys.executable, os.path.join(work, "attack.py"),
                                     helper_command(host.daemon_conf),
                                     str(qemu.pid), qemu.domain_name, json.dumps(events)],
                        work)
        left = wait_no_daemons(marker)
    finally:
        kill_user_processes(agent_user.name)
    assert attack.returncode == 0, attack.stderr
    assert not left, f"privsep daemon(s) outlived their client: {left}"
    r = json.loads(attack.stdout.strip().splitlines()[-1])
    assert r["good"][0] == "done" and len(r["good"][1]) == 3, r["good"]
    assert r["read_len"] == 3 * 24
    for label in ("cycles", "raw_config", "probe_cycles"):
        assert r[label][0] == "PermissionError", (label, r[label])
        assert "not an event of the intel_cqm PMU" in r[label][1], (label, r[label])
    for label in ("agent_itself", "init"):
        assert r[label][0] == "PermissionError" and "not the qemu of" in r[label][1], (
            label, r[label])
    # a domain with no pidfile runs no qemu: gone, as for a guest that just stopped
    assert r["other_domain"][0] == "PerfProcessGone" and "no pidfile" in r["other_domain"][1]
    assert r["unknown_handle"][0] in ("OSError", "FileNotFoundError"), r["unknown_handle"]
    assert r["close"][0] == "done"
    assert r["read_closed"][0] == "OSError" and "no perf counter" in r["read_closed"][1]
    assert os.listdir(agent_user.tmp) == []  # no socket directory left


@pytest.fixture(autouse=True)
def _no_stray_daemons(host: Host) -> Iterator[None]:
    """Whatever happened, no daemon of this test outlives it (killed and reported)."""
    yield
    left = wait_no_daemons(host.work)
    assert not left, f"privsep daemon(s) left: {left}"


def test_perf_without_privsep_daemon_is_named_once(host: Host) -> None:
    """The helper cannot start: one ERROR naming it, every instance unmonitored
    with that reason, host meters still published, nothing left running."""
    missing = "/nonexistent/cmt-privsep-helper"
    conf = host.config("missing.conf")
    with open(conf, "a", encoding="utf-8") as f:
        f.write(f"helper_command = {missing}\n")  # the last [cmt_privsep] line wins
    agent = subprocess.run([CLI, "poll", "--config-file", conf, "--cycles", "2", "--json"],
                           capture_output=True, text=True, timeout=120, check=False,
                           env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert agent.returncode == 0, agent.stderr
    assert "Traceback" not in agent.stderr, agent.stderr
    errors = [line for line in agent.stderr.splitlines()
              if " ERROR " in line and "ceilometer_cmt" in line]
    assert len(errors) == 1 and missing in errors[0], agent.stderr
    cycles = samples_by_cycle(agent.stdout)
    assert sorted(cycles) == [1, 2]
    for n in (1, 2):
        un = cycles[n][("cache.instances.unmonitored", "compute-1")]
        assert un["volume"] == len(host.instances)
        assert not [k for k in cycles[n] if k[0] == "cache.occupancy"]
        assert ("cache.size", "compute-1") in cycles[n]
