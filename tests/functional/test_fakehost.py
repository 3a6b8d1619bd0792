"""The fake compute host: real Nova-like domains seen by ceilometer's real
discovery through a private libvirtd, real stand-in qemu processes."""

from __future__ import annotations

import os

import pytest

from ceilometer_cmt.errors import InstanceGone
from ceilometer_cmt.linux import procfs
from ceilometer_cmt.testing import fakehost
from ceilometer_cmt.testing.libvirtd import LibvirtDaemon
from ceilometer_cmt.testing.wait import wait_until
from tests.support.libvirtd import needs_libvirtd
from tests.support.procutil import alive

libvirt = pytest.importorskip("libvirt")

pytestmark = needs_libvirtd


@pytest.fixture(scope="module")
def daemon():
    with LibvirtDaemon() as d:
        yield d


@pytest.fixture
def host(daemon, tmp_path):
    """Three running instances and one shut off, in a node file."""
    running = fakehost.make_instances(3)
    stopped = fakehost.make_instances(1, running=False, start=100)
    path = fakehost.write_node_xml(str(tmp_path / "node.xml"), running + stopped)
    return daemon.uri_for(path), running, stopped


def test_node_xml_escapes_odd_names(daemon, tmp_path):
    inst = fakehost.FakeInstance(
        uuid="2d0a3bd7-3d41-4bb8-a1f4-6c1e4c1d2f10", domain_name="instance-<&'\">",
        display_name="a <b> & 'c'", project_id="p", user_id="u", flavor_name='f"1')
    path = fakehost.write_node_xml(str(tmp_path / "node.xml"), [inst])
    conn = libvirt.open(daemon.uri_for(path))
    try:
        dom = conn.lookupByUUIDString(inst.uuid)
        assert dom.name() == inst.domain_name
        meta = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, fakehost.NOVA_NS)
        assert "a &lt;b&gt; &amp; 'c'" in meta
    finally:
        conn.close()


def test_ceilometer_discovery_lists_the_instances(host):
    from ceilometer import service
    from ceilometer.compute import discovery

    uri, running, stopped = host
    conf = service.prepare_service([], [])
    conf.set_override("libvirt_uri", uri)
    assert conf.compute.instance_discovery_method == "libvirt_metadata"
    found = discovery.InstanceDiscovery(conf).discover(manager=None)
    by_id = {r.id: r for r in found}
    assert set(by_id) == {i.uuid for i in running + stopped}
    for inst in running:
        r = by_id[inst.uuid]
        assert r.name == inst.display_name
        assert getattr(r, "OS-EXT-SRV-ATTR:instance_name") == inst.domain_name
        assert getattr(r, "OS-EXT-STS:vm_state") == "running"
        assert r.flavor["id"] == inst.flavor_id
        assert r.flavor["name"] == inst.flavor_name
        assert r.flavor["vcpus"] == inst.vcpus and r.flavor["ram"] == inst.memory_mb
        assert r.tenant_id == inst.project_id and r.user_id == inst.user_id
        assert r.image == {"id": inst.image_id}
        assert r.architecture == "x86_64"
    for inst in stopped:
        assert getattr(by_id[inst.uuid], "OS-EXT-STS:vm_state") == "shutdown"


def test_stand_in_qemu_looks_like_qemu_to_procfs(tmp_path):
    pid_dir = str(tmp_path / "qemu")
    q = fakehost.StandInQemu("instance-0000002a", pid_dir, extra_threads=3)
    q.start()
    try:
        found = procfs.find_qemu_process(pid_dir, "/proc", "instance-0000002a")
        assert found.pid == q.pid
        assert len(found.tids) == 4 and q.pid in found.tids
        with pytest.raises(InstanceGone):
            procfs.find_qemu_process(pid_dir, "/proc", "instance-0000002b")
    finally:
        pid = q.pid
        q.stop()
    assert not alive(pid)
    assert not os.path.exists(os.path.join(pid_dir, "instance-0000002a.pid"))
    with pytest.raises(InstanceGone):
        procfs.find_qemu_process(pid_dir, "/proc", "instance-0000002a")


def test_stand_in_qemu_with_comma_in_name(tmp_path):
    with fakehost.StandInQemu("a,b", str(tmp_path)) as q:
        assert procfs.find_qemu_process(str(tmp_path), "/proc", "a,b").pid == q.pid


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().split(") ", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _thread_states(pid: int) -> set[str]:
    states = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/stat", encoding="ascii") as f:
            states.add(f.read().split(") ", 1)[1][0])
    return states


def _eventually(pred, what: str, deadline: float = 20.0) -> None:
    wait_until(pred, what=what, timeout=deadline, interval=0.05,
               error=lambda _: pytest.fail.Exception(f"never happened: {what}", pytrace=True))


def test_stand_in_qemu_burns_then_rests(tmp_path):
    with fakehost.StandInQemu("instance-burn", str(tmp_path), extra_threads=1) as q:
        before = _cpu_ticks(q.pid)
        q.burn()
        _eventually(lambda: _cpu_ticks(q.pid) > before + 5, "cpu time grows while burning")
        q.rest()
        _eventually(lambda: _thread_states(q.pid) == {"S"}, "all threads asleep after rest")


def test_fake_host_starts_running_instances_only(tmp_path):
    insts = fakehost.make_instances(2) + fakehost.make_instances(1, running=False, start=9)
    with fakehost.FakeHost(insts, str(tmp_path)) as fh:
        pids = [q.pid for q in fh.qemus.values()]
        assert sorted(os.listdir(tmp_path)) == sorted(i.domain_name + ".pid" for i in insts[:2])
    assert os.listdir(tmp_path) == []
    assert not any(alive(p) for p in pids)


def test_stand_in_qemu_pinned_threads_all_inherit_the_cpus(tmp_path):
    """Tests that count L3 domains pin their stand-ins to CPU 0, so that what
    they expect does not depend on how many CPUs the test machine has."""
    q = fakehost.StandInQemu("instance-0000002c", str(tmp_path), extra_threads=2, cpus={0})
    q.start()
    try:
        assert len(q.tids) == 3
        assert all(os.sched_getaffinity(tid) == {0} for tid in q.tids)
    finally:
        q.stop()
