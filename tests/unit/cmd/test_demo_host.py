"""The demo host's pure half: the simulator scenario and the agent's config."""

from __future__ import annotations

import configparser

from ceilometer_cmt.cmd.demo_host import (
    HOST_NAME,
    NOISY_FROM,
    NOISY_TO,
    ceilometer_conf,
    scenario_for,
)
from ceilometer_cmt.testing.fakehost import make_instances


def test_scenario_has_one_noisy_neighbour_ramping_on_its_hot_domains() -> None:
    insts = make_instances(3) + make_instances(1, running=False, start=4)
    noisy = insts[1]
    doc = scenario_for(insts, noisy, [0, 1], 20.0, pids={noisy.domain_name: 4242}, hot=[0, 1])
    procs = doc["processes"]
    # the quiet running ones, then the noisy one; the shut-off one has no process
    assert [p["name"] for p in procs] == ["vm-1", "vm-3", "vm-2 (noisy neighbour)"]
    assert procs[0]["match"] == {"cmdline": "guest=instance-00000001,"}
    loud = procs[-1]
    assert loud["match"] == {"pid": 4242}
    start, end = loud["timeline"]
    assert (start["t"], end["t"]) == (0, 20.0)
    assert start["occupancy"] == {0: f"{NOISY_FROM}%", 1: f"{NOISY_FROM}%"}
    assert end["occupancy"] == {0: f"{NOISY_TO}%", 1: f"{NOISY_TO}%"}


def test_scenario_without_ramp_starts_at_the_top() -> None:
    insts = make_instances(1)
    doc = scenario_for(insts, insts[0], [3], 0)
    (loud,) = doc["processes"]
    (point,) = loud["timeline"]
    assert point["t"] == 0 and point["occupancy"] == {3: f"{NOISY_TO}%"}


def test_ceilometer_conf_points_at_the_demo_host() -> None:
    text = ceilometer_conf(node_xml="/d/node.xml", resctrl="/d/resctrl", sysfs="/d/sys",
                           pid_dir="/d/run", log_config="/d/logging.conf")
    conf = configparser.ConfigParser()
    conf.read_string(text)
    assert conf["DEFAULT"]["host"] == HOST_NAME
    assert conf["DEFAULT"]["libvirt_uri"] == "test:///d/node.xml"
    expected = {"backend": "resctrl", "resctrl_root": "/d/resctrl", "sysfs_root": "/d/sys",
                "libvirt_pid_dir": "/d/run", "privsep": "never"}
    assert expected.items() <= dict(conf["cmt"]).items()
