"""The pollsters' runtime: a discovered instance -> the backend's InstanceRef."""

from __future__ import annotations

import types

import pytest

from ceilometer_cmt.pollsters.runtime import instance_ref
from ceilometer_cmt.readings import InstanceRef

U = "11111111-1111-4111-8111-111111111111"


def _server(**kw: object) -> types.SimpleNamespace:
    server = types.SimpleNamespace(id=U, **kw)
    setattr(server, "OS-EXT-SRV-ATTR:instance_name", "instance-00000001")
    setattr(server, "OS-EXT-STS:vm_state", "running")
    return server


@pytest.mark.parametrize("kw,priority", [
    ({}, 0),
    ({"metadata": {"cmt:mbm_priority": "10"}}, 10),
    ({"metadata": {"cmt:mbm_priority": "-3"}}, -3),
    ({"metadata": {"cmt:mbm_priority": "high"}}, 0),
    # the flavor's extra specs when the server metadata does not say
    ({"metadata": {}, "flavor": {"extra_specs": {"cmt:mbm_priority": "5"}}}, 5),
    ({"metadata": {"cmt:mbm_priority": "1"},
      "flavor": {"extra_specs": {"cmt:mbm_priority": "5"}}}, 1),
    ({"flavor": {"name": "m1.small"}}, 0),
    ({"metadata": None, "flavor": None}, 0),
])
def test_instance_ref_carries_the_mbm_priority(kw: dict[str, object], priority: int) -> None:
    assert instance_ref(_server(**kw)) == InstanceRef(U, "instance-00000001", priority)


@pytest.mark.parametrize("state,polled", [
    # libvirt_metadata discovery: ceilometer's names of libvirt's power states
    ("running", True), ("paused", True), ("shutdown", False), ("crashed", False),
    # naive discovery: Nova's vm_state of the server from the Nova API
    ("active", True), ("rescued", True), ("resized", True), ("stopped", False),
    ("shelved_offloaded", False), ("building", False),
])
def test_instances_of_either_discovery_method_with_a_qemu_are_polled(
        state: str, polled: bool) -> None:
    server = _server()
    setattr(server, "OS-EXT-STS:vm_state", state)
    assert (instance_ref(server) is not None) is polled


# ------------------------------------------- the events the polled meters need

def _conf(tmp_path, sources: list[dict[str, object]]):  # type: ignore[no-untyped-def]
    """An agent's conf whose ``[polling] cfg_file`` holds ``sources``."""
    import yaml
    from ceilometer.polling import manager as polling_manager
    from oslo_config import cfg

    path = tmp_path / "polling.yaml"
    path.write_text(yaml.safe_dump({"sources": sources}))
    conf = cfg.ConfigOpts()
    conf.register_opts(polling_manager.POLLING_OPTS, group="polling")
    conf(args=[])
    conf.set_override("cfg_file", str(path), group="polling")
    return conf


def _source(name: str, *meter_patterns: str) -> dict[str, object]:
    return {"name": name, "interval": 60, "meters": list(meter_patterns)}


L3 = {"llc_occupancy", "mbm_total_bytes", "mbm_local_bytes"}
AET = {"core_energy", "uops_retired", "unhalted_core_cycles", "stalls_llc_miss"}


@pytest.mark.parametrize("sources,events", [
    # one source
    ([_source("a", "cache.occupancy")], {"llc_occupancy"}),
    ([_source("a", "cpu_l3_cache", "cache.size")], {"llc_occupancy"}),
    ([_source("a", "cache.size", "cache.monitors.used")], set()),
    ([_source("a", "memory.bandwidth.*")], {"mbm_total_bytes", "mbm_local_bytes"}),
    ([_source("a", "memory.bandwidth.total")], {"mbm_total_bytes"}),
    ([_source("a", "*")], L3 | AET),
    ([_source("a", "!cache.*", "!cpu_l3_cache", "!energy.*", "!power.*", "!cpu.ipc",
              "!memory.bandwidth.local*")], {"mbm_total_bytes"}),
    ([_source("a", "cpu.ipc")], {"uops_retired", "unhalted_core_cycles"}),
    ([_source("a", "cpu", "disk.*", "network.*")], set()),  # none of ours
    # two sources: the union
    ([_source("a", "cache.occupancy"), _source("b", "memory.bandwidth.total.bytes")],
     {"llc_occupancy", "mbm_total_bytes"}),
    ([_source("a", "cache.*"), _source("b", "!memory.bandwidth.*", "!cache.*",
                                       "!cpu_l3_cache", "!cpu.ipc", "!power.core")],
     {"llc_occupancy", "core_energy", "stalls_llc_miss", "unhalted_core_cycles"}),
    # three sources, ceilometer's own meters among them
    ([_source("cpu", "cpu", "vcpus"), _source("cmt_cache", "cache.occupancy.percent"),
      _source("energy", "energy.*", "power.*")], {"llc_occupancy", "core_energy"}),
    ([_source("a", "memory.bandwidth.local"), _source("b", "cache.llc.*"),
      _source("c", "cache.size", "cache.monitors.*")],
     {"mbm_local_bytes", "stalls_llc_miss", "unhalted_core_cycles"}),
])
def test_needed_events_are_those_of_the_polled_meters(tmp_path, sources, events
                                                      ):  # type: ignore[no-untyped-def]
    from ceilometer_cmt.pollsters.runtime import needed_events

    assert needed_events(_conf(tmp_path, sources)) == events


def test_polled_meters_follow_ceilometers_own_matching(tmp_path):  # type: ignore[no-untyped-def]
    from ceilometer.polling.manager import PollingSource

    from ceilometer_cmt import meters
    from ceilometer_cmt.pollsters.runtime import polled_meters

    patterns = ["memory.bandwidth.*", "cache.occupancy"]
    polled = polled_meters(_conf(tmp_path, [_source("a", *patterns)]))
    source = PollingSource(_source("a", *patterns))
    assert polled == tuple(m for m in meters.TABLE if source.support_meter(m.name))
    assert [m.name for m in polled or ()] == [
        "cache.occupancy", "memory.bandwidth.total.bytes", "memory.bandwidth.local.bytes",
        "memory.bandwidth.total", "memory.bandwidth.local",
        "memory.bandwidth.counters.total", "memory.bandwidth.counters.available"]


@pytest.mark.parametrize("text", ["sources: [{name: a}]\n", "nothing: here\n", "{{{\n"])
def test_an_unreadable_polling_file_reads_every_event(tmp_path, caplog, text
                                                      ):  # type: ignore[no-untyped-def]
    from ceilometer_cmt.pollsters.runtime import needed_events

    conf = _conf(tmp_path, [])
    (tmp_path / "polling.yaml").write_text(text)
    assert needed_events(conf) is None
    assert "reading every event the host offers" in caplog.text


def test_one_read_per_source_and_cycle_counted_when_an_instance_pollster_asks() -> None:
    """A source with host and per-instance meters (the all-in-one file of
    ``ceilometer-cmt poll``): whichever pollster reads first, one backend read
    serves the cycle and its counters are counted once."""
    from ceilometer_cmt.monitor import CacheMonitor
    from ceilometer_cmt.pollsters import runtime
    from ceilometer_cmt.readings import BackendCycle, HostCache, InstanceReading

    class Backend:
        name, syncs = "scripted", 0

        def host_cache(self) -> HostCache:
            return HostCache(())

        def sync(self, instances: object) -> BackendCycle:
            self.syncs += 1
            return BackendCycle({U: InstanceReading({0: 1}, {"/0": 100 * self.syncs}, {})})

        def close(self) -> None:
            pass

    backend = Backend()
    rt = runtime.Runtime(None, CacheMonitor(backend))  # type: ignore[arg-type]
    servers = [_server()]
    cache: dict[str, object] = {}
    host_first = runtime.cycle(rt, cache, servers, counting=False)  # a host pollster
    assert host_first.instances[U].mbm_total_bytes is None
    for _ in range(3):  # then the per-instance pollsters of the same source
        assert runtime.cycle(rt, cache, servers) is host_first
    assert (backend.syncs, host_first.instances[U].mbm_total_bytes) == (1, 100)
    other_source = runtime.cycle(rt, {}, servers, counting=False)  # host meters alone
    assert (backend.syncs, other_source.instances[U].mbm_total_bytes) == (2, None)
    assert runtime.cycle(rt, {}, servers).instances[U].mbm_total_bytes == 300
