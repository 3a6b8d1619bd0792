"""Real polling cycles through ceilometer's own polling manager.

ceilometer's real ``local_instances`` discovery reads a libvirt test-driver
host whose domains carry Nova metadata; stand-in qemu processes have pidfiles
and cmdlines; resctrl is a kernel-format fixture tree. Every published sample
is checked.
"""

from __future__ import annotations

import os
import shutil
import textwrap

import pytest
from oslo_messaging.notify import _impl_test

from ceilometer_cmt import meters
from ceilometer_cmt.cmd import poll
from ceilometer_cmt.pollsters import runtime
from ceilometer_cmt.simulator.topology import format_cpu_list, get_topology
from ceilometer_cmt.testing.kernel_trees import set_value

MiB = 1024 * 1024
#: the size of each L3 of the fixture host (the ``host`` fixture: intel-2s)
L3 = get_topology("intel-2s").l3[0].size


@pytest.fixture
def cloud(host):  # type: ignore[no-untyped-def]
    running, stopped, conf = host.cloud(2, 1)
    return host, running, stopped, conf


def by_name(samples):  # type: ignore[no-untyped-def]
    out: dict[tuple[str, str], dict] = {}  # type: ignore[type-arg]
    for s in samples:
        key = (s["counter_name"], s["resource_id"])
        assert key not in out, f"duplicate sample {key}"
        out[key] = s
    return out


def test_two_cycles_publish_every_meter_right(cloud, monkeypatch):  # type: ignore[no-untyped-def]
    host, running, stopped, conf = cloud
    # resctrl writes go to our fixture tree through the kernel stand-in
    monkeypatch.setattr(runtime, "resctrl_ops", lambda conf, settings: host.ops)
    a, b = running
    ga = os.path.join(host.resctrl, "mon_groups", "ceilometer-" + a.uuid)
    gb = os.path.join(host.resctrl, "mon_groups", "ceilometer-" + b.uuid)
    with poll.polling_agent([conf]) as agent:
        first = by_name(poll.run_cycles(agent, 1)[0])
        # cycle 1 created the groups; the "hardware" now reports
        set_value(ga, 0, "llc_occupancy", 12 * MiB)  # 12 MiB of socket 0's L3
        set_value(ga, 1, "llc_occupancy", 1 * MiB)
        set_value(ga, 0, "mbm_total_bytes", 5_000_000)
        set_value(ga, 1, "mbm_total_bytes", 1_000_000)
        set_value(ga, 0, "mbm_local_bytes", 4_000_000)
        set_value(gb, 0, "llc_occupancy", "Unavailable")
        set_value(gb, 1, "llc_occupancy", 2 * MiB)
        second = by_name(poll.run_cycles(agent, 1)[0])

    # cycle 1: occupancy of fresh groups, cumulative counters, no rate yet
    assert first[("cache.occupancy", a.uuid)]["counter_volume"] == 0
    assert ("memory.bandwidth.total", a.uuid) not in first
    assert first[("memory.bandwidth.total.bytes", a.uuid)]["counter_volume"] == 0

    s = second[("cache.occupancy", a.uuid)]
    assert (s["counter_type"], s["counter_unit"], s["counter_volume"]) == ("gauge", "B", 13 * MiB)
    assert s["resource_metadata"]["cache_domains"] == {"0": 12 * MiB, "1": 1 * MiB}
    assert s["resource_metadata"]["cmt_backend"] == "resctrl"
    assert s["resource_metadata"]["display_name"] == a.display_name
    assert s["project_id"] == a.project_id and s["user_id"] == a.user_id
    assert second[("cpu_l3_cache", a.uuid)]["counter_volume"] == 13 * MiB
    p = second[("cache.occupancy.percent", a.uuid)]
    assert (p["counter_type"], p["counter_unit"]) == ("gauge", "%")
    assert p["counter_volume"] == pytest.approx(100.0 * 12 * MiB / L3)  # busiest domain
    t = second[("memory.bandwidth.total.bytes", a.uuid)]
    assert (t["counter_type"], t["counter_unit"], t["counter_volume"]) == (
        "cumulative", "B", 6_000_000)
    assert second[("memory.bandwidth.local.bytes", a.uuid)]["counter_volume"] == 4_000_000
    rate = second[("memory.bandwidth.total", a.uuid)]
    assert (rate["counter_type"], rate["counter_unit"]) == ("gauge", "B/s")
    assert rate["counter_volume"] > 0
    assert second[("memory.bandwidth.local", a.uuid)]["counter_volume"] > 0

    # instance b: one domain Unavailable -> no occupancy samples at all, never 0
    for meter in ("cache.occupancy", "cache.occupancy.percent", "cpu_l3_cache"):
        assert (meter, b.uuid) not in second
    assert second[("memory.bandwidth.total.bytes", b.uuid)]["counter_volume"] == 0

    # the stopped instance has no sample and is not "unmonitored"
    assert not [k for k in second if k[1] == stopped[0].uuid]

    size = second[("cache.size", "compute-1")]
    assert (size["counter_unit"], size["counter_volume"]) == ("B", 2 * L3)
    assert [d["id"] for d in size["resource_metadata"]["cache_domains"]] == [0, 1]
    assert size["resource_metadata"]["host_name"] == "compute-1"
    assert second[("cache.monitors.total", "compute-1")]["counter_volume"] == 176
    assert second[("cache.monitors.used", "compute-1")]["counter_volume"] == 3
    un = second[("cache.instances.unmonitored", "compute-1")]
    assert (un["counter_unit"], un["counter_volume"]) == ("instance", 0)

    expected = {"cache.occupancy", "cache.occupancy.percent", "cpu_l3_cache",
                "memory.bandwidth.total.bytes", "memory.bandwidth.local.bytes",
                "memory.bandwidth.total", "memory.bandwidth.local", "cache.size",
                "cache.monitors.total", "cache.monitors.used", "cache.instances.unmonitored",
                "cache.monitors.removed_by_others", "cache.allocation.percent",
                "cache.guard.capped"}
    assert {k[0] for k in second} == expected
    # the fixture host has CAT: every way in the default group, nobody capped
    assert second[("cache.allocation.percent", a.uuid)]["counter_volume"] == 100.0
    assert second[("cache.guard.capped", "compute-1")]["counter_volume"] == 0


def test_host_source_between_cycles_leaves_the_rates_alone(
        cloud, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The shipped polling.yaml: per-instance meters in one source, host
    meters in another at their own interval. The host source reads too;
    the next per-instance rate is still over the per-instance interval."""
    host, running, _stopped, conf = cloud
    monkeypatch.setattr(runtime, "resctrl_ops", lambda conf, settings: host.ops)
    polling_file = tmp_path / "polling.yaml"
    polling_file.write_text(meters.polling_yaml())  # cmt_cache 60 s, cmt_host 600 s
    ga = os.path.join(host.resctrl, "mon_groups", "ceilometer-" + running[0].uuid)
    now = [0.0]

    def poll_source(tasks, interval):  # type: ignore[no-untyped-def]
        _impl_test.reset()
        tasks[interval].poll_and_notify()
        return by_name(s for n in _impl_test.NOTIFICATIONS for s in n[1]["payload"]["samples"])

    with poll.polling_agent([conf], str(polling_file)) as agent:
        runtime.get_runtime(agent.conf).monitor.clock = lambda: now[0]
        tasks = agent.setup_polling_tasks()
        assert sorted(tasks) == [60, 600]
        poll_source(tasks, 60)  # t=0: the groups are made, their counters start at 0
        set_value(ga, 0, "mbm_total_bytes", 9_000_000)
        now[0] = 1.0
        hosts = poll_source(tasks, 600)  # t=1: the host source reads 9 MB
        assert {k[1] for k in hosts} == {"compute-1"}  # host meters only
        assert hosts[("cache.monitors.used", "compute-1")]["counter_volume"] == 3
        set_value(ga, 0, "mbm_total_bytes", 10_000_000)
        now[0] = 10.0
        second = poll_source(tasks, 60)  # t=10: 10 MB in 10 s, not 1 MB in 9 s
    assert second[("memory.bandwidth.total.bytes", running[0].uuid)]["counter_volume"] == (
        10_000_000)
    rate = second[("memory.bandwidth.total", running[0].uuid)]["counter_volume"]
    assert rate == pytest.approx(1_000_000)


def test_unmonitored_instance_is_counted_with_reason(cloud, monkeypatch
                                                     ):  # type: ignore[no-untyped-def]
    host, running, _stopped, conf = cloud
    monkeypatch.setattr(runtime, "resctrl_ops", lambda conf, settings: host.ops)
    host.qemus[1].stop()  # the second instance's qemu died; libvirt still says running
    with poll.polling_agent([conf]) as agent:
        samples = by_name(poll.run_cycles(agent, 1)[0])
    un = samples[("cache.instances.unmonitored", "compute-1")]
    assert un["counter_volume"] == 1
    assert list(un["resource_metadata"]["unmonitored"]) == [running[1].uuid]
    assert ("cache.occupancy", running[0].uuid) in samples
    assert ("cache.occupancy", running[1].uuid) not in samples


def test_empty_log_interval_in_the_config_file_is_the_default(
        cloud, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """``log_interval =`` gives None through oslo; the no-data log compared it
    with a float on its second line for the same instance and lost the cycle."""
    host, running, _stopped, conf = cloud
    with open(conf, "a") as f:
        f.write("log_interval =\n")
    monkeypatch.setattr(runtime, "resctrl_ops", lambda conf, settings: host.ops)
    host.qemus[1].stop()  # unmonitored: logged (rate-limited) every cycle
    with poll.polling_agent([conf]) as agent:
        cycles = [by_name(c) for c in poll.run_cycles(agent, 2)]
    for samples in cycles:
        assert samples[("cache.instances.unmonitored", "compute-1")]["counter_volume"] == 1
        assert ("cache.occupancy", running[0].uuid) in samples


def no_backend_conf(tmp_path, extra_cmt: str = "") -> str:  # type: ignore[no-untyped-def]
    """A config whose resctrl backend cannot start (no mount at resctrl_root)."""
    conf = tmp_path / "c.conf"
    conf.write_text(textwrap.dedent(f"""
        [DEFAULT]
        host = compute-1
        libvirt_uri = test:///default
        log_file = {tmp_path}/agent.log
        [cmt]
        backend = resctrl
        resctrl_root = {tmp_path}/nothing
        privsep = never
    """) + extra_cmt + "\n")
    return str(conf)


def test_no_backend_turns_instance_meters_off_with_warning(tmp_path
                                                           ):  # type: ignore[no-untyped-def]
    conf = no_backend_conf(tmp_path)
    with poll.polling_agent([conf]) as agent:
        samples = poll.run_cycles(agent, 1)[0]
    assert [s["counter_name"] for s in samples] == ["cache.size"]  # from the real sysfs
    with open(tmp_path / "agent.log") as f:
        err = f.read()
    assert "WARNING ceilometer_cmt.pollsters.runtime" in err
    assert "per-instance cache meters are OFF" in err and "not a mount point" in err


def test_no_backend_cache_size_walks_sysfs_once_until_cpus_change(
        host, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """cache.size without a backend: the sysfs tree is walked on the first cycle
    and again only when the online cpus change (or every REFRESH_EVERY cycles)."""
    sys_cpu = os.path.join(host.sysfs, "devices", "system", "cpu")
    with open(os.path.join(sys_cpu, "online"), "w") as f:
        f.write(format_cpu_list(host.topo.cpus) + "\n")
    conf = no_backend_conf(tmp_path, f"sysfs_root = {host.sysfs}")

    def cache_size(agent):  # type: ignore[no-untyped-def]
        samples = by_name(poll.run_cycles(agent, 1)[0])
        assert {k[0] for k in samples} == {"cache.size"}
        s = samples[("cache.size", "compute-1")]
        return s["counter_volume"], [d["id"] for d in s["resource_metadata"]["cache_domains"]]

    with poll.polling_agent([conf]) as agent:
        assert cache_size(agent) == (2 * L3, [0, 1])
        # Every L3 file now says 1 MiB: a walk per cycle would publish 2 MiB.
        for cpu in host.topo.cpus:
            with open(os.path.join(sys_cpu, f"cpu{cpu}", "cache", "index3", "size"), "w") as f:
                f.write("1024K\n")
        assert cache_size(agent) == (2 * L3, [0, 1])
        # Socket 1 goes offline (its cpus lose their cache directories): new walk.
        for cpu in host.topo.cpus_by_l3[1]:
            shutil.rmtree(os.path.join(sys_cpu, f"cpu{cpu}", "cache"))
        with open(os.path.join(sys_cpu, "online"), "w") as f:
            f.write(format_cpu_list(host.topo.cpus_by_l3[0]) + "\n")
        assert cache_size(agent) == (1 * MiB, [0])
