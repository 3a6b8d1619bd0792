"""A real ``ceilometer-polling`` reads only the events its polling.yaml asks for.

The agent (``ceilometer-polling --polling-namespaces compute``, its own
process, this plugin's entry points) runs on the resctrl simulator (FUSE) with
one stand-in qemu found through a libvirt test-driver node. The simulator
counts every read of every value file (control command ``reads``): with only
``cache.occupancy`` polled, the agent reads ``llc_occupancy`` once per cycle
and L3 domain and never an ``mbm_*`` file. Each of those reads is, on real
resctrl, a ``mon_event_read()`` run on a CPU of that domain.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ceilometer_cmt.simulator.topology import get_topology
from ceilometer_cmt.testing.fakehost import StandInQemu, make_instances, write_node_xml
from ceilometer_cmt.testing.wait import wait_until

AGENT = Path(sys.executable).parent / "ceilometer-polling"
TOPO = get_topology("intel-2s")


def _ini(path: Path, sections: dict[str, dict[str, object]]) -> Path:
    path.write_text("".join(
        f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in options.items())
        for name, options in sections.items()))
    return path


def _stop(agent: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the agent's process group (cotyledon forks its workers), then KILL."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(agent.pid, signal.SIGTERM)
    try:
        agent.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(agent.pid, signal.SIGKILL)
    agent.wait()


@pytest.mark.parametrize("polled,events", [
    (["cache.occupancy"], {"llc_occupancy"}),
    (["cache.occupancy", "memory.bandwidth.total", "cache.size"],
     {"llc_occupancy", "mbm_total_bytes"}),
])
def test_a_real_agent_reads_only_the_events_of_its_polled_meters(
        sim: Any, tmp_path: Path, polled: list[str], events: set[str]) -> None:
    if not AGENT.exists():
        pytest.skip(f"{AGENT} is not installed")
    simulator = sim("intel-2s")
    (inst,) = make_instances(1, start=13)
    node = write_node_xml(str(tmp_path / "node.xml"), [inst])
    TOPO.write_sysfs(str(tmp_path / "sys"))
    polling = tmp_path / "polling.yaml"
    polling.write_text(yaml.safe_dump({"sources": [
        {"name": "few", "interval": 1, "meters": polled}]}))
    conf = _ini(tmp_path / "ceilometer.conf", {
        "DEFAULT": {"host": "cmt-reads", "libvirt_uri": f"test://{node}",
                    "transport_url": "fake://", "log_file": tmp_path / "agent.log"},
        "polling": {"cfg_file": polling, "enable_notifications": False},
        "cmt": {"resctrl_root": simulator.mountpoint, "sysfs_root": tmp_path / "sys",
                "libvirt_pid_dir": tmp_path / "run", "privsep": "never"},
    })
    group = f"mon_groups/ceilometer-{inst.uuid}/mon_data"
    with StandInQemu(inst.domain_name, str(tmp_path / "run"), cpus=[0]):
        agent = subprocess.Popen(
            [str(AGENT), "--polling-namespaces", "compute", "--config-file", str(conf)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        try:
            reads: dict[str, int] = {}

            def three_cycles_or_exit() -> bool:
                """Three cycles after the first read of the instance's occupancy."""
                nonlocal reads
                if agent.poll() is not None:
                    return True  # the assertion below shows the log
                reads = simulator.control("reads", match=f"{group}/*")
                return bool(reads) and min(reads.values()) >= 3 and len(reads) >= len(
                    TOPO.l3_ids)

            def agent_log() -> str:
                return (tmp_path / "agent.log").read_text(errors="replace")

            wait_until(three_cycles_or_exit, what="three cycles that read the instance",
                       timeout=120, interval=0.5, error=lambda m: AssertionError(
                           f"no cycle read the instance ({m}):\n{agent_log()[-3000:]}"))
            log = agent_log()
            assert reads and min(reads.values()) >= 3, f"no cycle read the instance:\n{log[-3000:]}"
            assert "events read: " in log
        finally:
            _stop(agent)
    everything = simulator.control("reads")
    assert {os.path.basename(p) for p in everything} == events
    # one read of each needed event per L3 domain, the same count for all:
    # the cycles read each file once
    assert {p.removeprefix(group + "/") for p in reads} == {
        f"mon_L3_{d:02d}/{ev}" for d in TOPO.l3_ids for ev in events}
