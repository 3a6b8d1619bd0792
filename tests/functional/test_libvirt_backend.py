"""The libvirt backend against a real private libvirtd (test driver).

The test driver reports no cache statistics, so a thin connection wrapper
adds real-shaped keys (see test_libvirt_stats) to the records that the real
bulk call returned: the backend's whole path (RPC, record matching, parsing)
is the one it takes on a real host. The wrapper also counts every method the
backend calls on the connection.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

import pytest

from ceilometer_cmt.backends.libvirt.backend import LibvirtBackend
from ceilometer_cmt.errors import BackendUnavailable
from ceilometer_cmt.readings import InstanceRef
from ceilometer_cmt.testing import fakehost
from ceilometer_cmt.testing.libvirtd import LibvirtDaemon
from tests.support.libvirtd import needs_libvirtd
from tests.unit.backends.libvirt.test_stats import CAPS, MISSING, STATES, MiB, cache_keys, mbw_keys

libvirt = pytest.importorskip("libvirt")

pytestmark = needs_libvirtd


class CountingConnection:
    """A real virConnect whose bulk records get extra keys per domain name.

    An extra key whose value is ``MISSING`` is taken out of the record.
    """

    def __init__(self, conn: Any, extra: dict[str, dict[str, object]], calls: list[str],
                 caps: str | None = None, bad_flags: int = 0) -> None:
        self._conn = conn
        self._extra = extra
        self._calls = calls
        self._caps = caps
        self.bad_flags = bad_flags

    def getAllDomainStats(self, stats: int, flags: int = 0) -> list[Any]:  # noqa: N802
        self._calls.append("getAllDomainStats")
        records = self._conn.getAllDomainStats(stats, flags | self.bad_flags)
        out = []
        for dom, params in records:
            merged = {**params, **self._extra.get(dom.name(), {})}
            out.append((dom, {k: v for k, v in merged.items() if v is not MISSING}))
        return out

    def getCapabilities(self) -> str:  # noqa: N802
        self._calls.append("getCapabilities")
        real = self._conn.getCapabilities()
        return self._caps if self._caps is not None else real

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._conn, name)
        if callable(attr) and name not in ("isAlive", "close"):
            def counted(*a: Any, **kw: Any) -> Any:
                self._calls.append(name)
                return attr(*a, **kw)
            return counted
        return attr


class Host:
    """A node file, and a factory of counting connections to it."""

    def __init__(self, daemon: LibvirtDaemon, path: str,
                 instances: list[fakehost.FakeInstance]) -> None:
        self.daemon = daemon
        self.instances = instances
        fakehost.write_node_xml(path, instances)
        self.uri = daemon.uri_for(path)
        self.extra: dict[str, dict[str, object]] = {}
        self.calls: list[str] = []
        self.caps: str | None = None
        self.bad_flags = 0
        self.conns: list[CountingConnection] = []

    def factory(self, uri: str) -> CountingConnection:
        self.calls.append("open")
        c = CountingConnection(libvirt.openReadOnly(uri), self.extra, self.calls, self.caps,
                               self.bad_flags)
        self.conns.append(c)
        return c

    def backend(self, **kw: Any) -> LibvirtBackend:
        return LibvirtBackend(self.uri, connection_factory=self.factory, **kw)

    def refs(self, running: bool = True) -> list[InstanceRef]:
        return [i.ref for i in self.instances if i.running == running]


@pytest.fixture(scope="module")
def daemon():
    with LibvirtDaemon() as d:
        yield d


@pytest.fixture
def host(daemon, tmp_path):
    insts = fakehost.make_instances(4) + fakehost.make_instances(1, running=False, start=50)
    h = Host(daemon, str(tmp_path / "node.xml"), insts)
    a, b, c, _d, _off = insts
    h.extra[a.domain_name] = cache_keys([("vcpus_0", "0", [(0, 3 * MiB), (1, 1 * MiB)]),
                                         ("vcpus_1", "1", [(0, 2 * MiB), (1, 0)])])
    h.extra[b.domain_name] = {**cache_keys([("vcpus_0", "0", [(0, 7 * MiB), (1, None)])]),
                              **mbw_keys([("vcpus_0", "0", [(0, 100, 300), (1, 10, 20)])])}
    h.extra[c.domain_name] = {"perf.cmt": 5 * MiB, "perf.mbmt": 4000, "perf.mbml": 1000}
    # insts[3] reports nothing: no monitor, no perf event.
    return h


def test_one_bulk_call_per_cycle_for_all_instances(host):
    backend = host.backend()
    try:
        a, b, c, d, off = host.instances
        gone = InstanceRef("0f6b2a0e-8d55-4d55-9d0b-2f0b5f3c9a11", "instance-deadbeef")
        refs = [a.ref, b.ref, c.ref, d.ref, off.ref, gone]
        for cycle_no in range(1, 4):
            host.calls.clear()
            cycle = backend.sync(refs)
            assert host.calls == ["getAllDomainStats"], "exactly one RPC per cycle"
            assert backend.stats_calls == cycle_no
        assert backend.connects == 1
        assert set(cycle.readings) == {a.uuid, b.uuid, c.uuid}
        assert cycle.readings[a.uuid].occupancy == {0: 5 * MiB, 1: 1 * MiB}
        rb = cycle.readings[b.uuid]
        assert rb.occupancy == {0: 7 * MiB, 1: None}
        dom_id = host.conns[0].lookupByName(b.domain_name).ID()
        assert rb.mbm_total == {f"libvirt:{dom_id}/vcpus_0/0": 300,
                                f"libvirt:{dom_id}/vcpus_0/1": 20}
        assert rb.mbm_local == {f"libvirt:{dom_id}/vcpus_0/0": 100,
                                f"libvirt:{dom_id}/vcpus_0/1": 10}
        rc = cycle.readings[c.uuid]
        assert rc.occupancy == {-1: 5 * MiB}
        assert list(rc.mbm_total.values()) == [4000] and list(rc.mbm_local.values()) == [1000]
        assert set(cycle.unmonitored) == {d.uuid, off.uuid, gone.uuid}
        assert "perf event cmt" in cycle.unmonitored[d.uuid]
        assert "not running" in cycle.unmonitored[off.uuid]
        assert cycle.unmonitored[gone.uuid] == "no such libvirt domain"
        assert cycle.monitors_used == 2 + 1 + 1
    finally:
        backend.close()


def test_domains_are_matched_by_name_when_uuid_differs(host):
    backend = host.backend()
    try:
        a = host.instances[0]
        other = InstanceRef("11111111-2222-4333-8444-555555555555", a.domain_name)
        cycle = backend.sync([other])
        assert set(cycle.readings) == {other.uuid}
    finally:
        backend.close()


def test_probe_counts_domains_with_cache_data(host):
    backend = host.backend()
    try:
        assert backend.domains_with_cache_data() == 3
        host.extra.clear()
        assert backend.domains_with_cache_data() == 0
    finally:
        backend.close()


@pytest.mark.parametrize(("state", "active"), STATES)
def test_every_state_test_of_the_backend_agrees(host, state, active):
    """Readings, cache.monitors.used, the auto probe and the unmonitored reason
    all follow libvirt_stats.is_active for one odd or ordinary state.state."""
    a, _b, _c, d, _off = host.instances
    host.extra.clear()
    host.extra[a.domain_name] = {**cache_keys([("vcpus_0", "0", [(0, 3 * MiB)]),
                                               ("vcpus_1", "1", [(0, 1 * MiB)])]),
                                 "state.state": state}
    host.extra[d.domain_name] = {"state.state": state}  # no cache keys
    backend = host.backend()
    try:
        cycle = backend.sync([a.ref, d.ref])
        assert (a.uuid in cycle.readings) is active
        assert cycle.monitors_used == (2 if active else 0)
        assert backend.domains_with_cache_data() == (1 if active else 0)
        assert ("not running" in cycle.unmonitored[d.uuid]) is not active
        if not active:
            assert cycle.unmonitored[a.uuid] == cycle.unmonitored[d.uuid]
    finally:
        backend.close()


def test_reconnects_after_libvirtd_restart(tmp_path):
    warnings: list[str] = []
    insts = fakehost.make_instances(2)
    with LibvirtDaemon() as d:
        h = Host(d, str(tmp_path / "node.xml"), insts)
        for i in insts:
            h.extra[i.domain_name] = cache_keys([("m", "0", [(0, 4096)])])
        backend = h.backend(warn=warnings.append)
        try:
            refs = h.refs()
            assert len(backend.sync(refs).readings) == 2

            d.restart()  # clients are cut off mid-run
            lost = backend.sync(refs)
            assert lost.readings == {}
            assert set(lost.unmonitored) == {i.uuid for i in insts}
            assert all("connection lost" in r for r in lost.unmonitored.values())
            assert len(warnings) == 1 and h.uri in warnings[0]

            back = backend.sync(refs)
            assert len(back.readings) == 2 and back.unmonitored == {}
            assert backend.connects == 2

            d.kill()  # down for two cycles: no crash, still one warning
            for _ in range(2):
                down = backend.sync(refs)
                assert set(down.unmonitored) == {i.uuid for i in insts}
            assert len(warnings) == 2  # a new outage after a good cycle: one more warning
            d.start()
            assert len(backend.sync(refs).readings) == 2
            assert len(warnings) == 2
        finally:
            backend.close()


def test_connection_lost_warns_through_logging(tmp_path, caplog):
    insts = fakehost.make_instances(1)
    with LibvirtDaemon() as d:
        path = fakehost.write_node_xml(str(tmp_path / "node.xml"), insts)
        backend = LibvirtBackend(d.uri_for(path))  # the real libvirt.openReadOnly
        try:
            backend.sync([insts[0].ref])
            d.restart()
            with caplog.at_level(logging.WARNING, logger="ceilometer_cmt.backends.libvirt.backend"):
                backend.sync([insts[0].ref])
                backend.sync([insts[0].ref])
            lost = [r for r in caplog.records if "connection" in r.getMessage()]
            assert len(lost) == 1 and lost[0].levelno == logging.WARNING
            assert backend.connects == 2
        finally:
            backend.close()


def test_stats_error_on_a_live_connection_keeps_it(host, caplog):
    backend = host.backend()

    def failures() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "getAllDomainStats failed" in r.getMessage()]

    try:
        with caplog.at_level(logging.INFO, logger="ceilometer_cmt.backends.libvirt.backend"):
            host.conns[0].bad_flags = 1 << 20  # the test driver rejects unknown flags
            for _ in range(3):
                cycle = backend.sync(host.refs())
                assert cycle.readings == {}
                assert all("stats call failed" in r for r in cycle.unmonitored.values())
            assert len(failures()) == 1 and failures()[0].levelno == logging.WARNING
            host.conns[0].bad_flags = 0
            assert len(backend.sync(host.refs()).readings) == 3
            assert any("answers again" in r.getMessage() for r in caplog.records)
            host.conns[0].bad_flags = 1 << 20  # failing again after a success: logged again
            backend.sync(host.refs())
            assert len(failures()) == 2
        assert backend.connects == 1
    finally:
        backend.close()


def test_unreachable_libvirt_is_backend_unavailable(tmp_path):
    uri = f"test+unix:///default?socket={tmp_path}/no-such-sock"
    with pytest.raises(BackendUnavailable, match="cannot connect"):
        LibvirtBackend(uri)


def test_host_cache_from_capabilities_once_per_connection(host):
    host.caps = CAPS
    backend = host.backend()
    try:
        hc = backend.host_cache()
        assert hc.source == "libvirt" and hc.monitors_total == 176
        assert [d.size for d in hc.domains] == [15 * MiB, 15 * MiB]
        assert backend.host_cache() == hc
        assert host.calls.count("getCapabilities") == 1
    finally:
        backend.close()


def _sysfs_tree(root: str) -> None:
    for cpu, cid in ((0, 0), (1, 0), (2, 1), (3, 1)):
        base = os.path.join(root, "devices", "system", "cpu", f"cpu{cpu}", "cache", "index3")
        os.makedirs(base)
        for name, value in (("level", "3"), ("type", "Unified"), ("size", "8192K"),
                            ("id", str(cid)), ("shared_cpu_list", "0-1" if cid == 0 else "2-3")):
            with open(os.path.join(base, name), "w", encoding="ascii") as f:
                f.write(value + "\n")


def test_host_cache_falls_back_to_sysfs(host, tmp_path):
    sysfs = str(tmp_path / "sys")
    _sysfs_tree(sysfs)
    backend = host.backend(sysfs_root=sysfs)  # the test driver's caps have no <cache>
    try:
        hc = backend.host_cache()
        assert hc.source == "sysfs"
        assert [(d.id, d.size) for d in hc.domains] == [(0, 8 * MiB), (1, 8 * MiB)]
    finally:
        backend.close()


def test_cycles_become_meters_through_the_monitor(host):
    """Backend -> the lead's CacheMonitor: percent against libvirt's banks, MBM rates."""
    from ceilometer_cmt.monitor import CacheMonitor

    host.caps = CAPS
    a, b = host.instances[0], host.instances[1]
    now = [1000.0]
    mon = CacheMonitor(host.backend(), clock=lambda: now[0])
    try:
        first = mon.poll(host.refs())
        ma = first.instances[a.uuid]
        assert ma.occupancy == 6 * MiB and ma.occupancy_domains == {0: 5 * MiB, 1: 1 * MiB}
        assert ma.occupancy_percent == pytest.approx(100 * 5 / 15)
        assert first.instances[b.uuid].occupancy is None  # bank 1 gave no value
        assert first.instances[b.uuid].mbm_total_bytes == 320
        assert first.instances[b.uuid].mbm_total_rate is None  # first read: no rate
        host.extra[b.domain_name].update({
            "memory.bandwidth.monitor.0.node.0.bytes.total": 300 + 10_000,
            "memory.bandwidth.monitor.0.node.1.bytes.total": 20 + 5_000})
        now[0] += 10.0
        second = mon.poll(host.refs())
        mb = second.instances[b.uuid]
        assert mb.mbm_total_bytes == 320 + 15_000
        assert mb.mbm_total_rate == pytest.approx(1_500.0)
        assert second.host_cache.source == "libvirt" and second.host_cache.monitors_total == 176
    finally:
        mon.close()


# --- reconnection through ceilometer's own libvirt helpers -------------------

class CeilometerConnections:
    """The agent's ``connect`` (ceilometer's refresh_libvirt_connection, built
    by the pollsters' runtime), with each connection it gives wrapped once in
    a CountingConnection so that the test driver's records carry cache keys."""

    def __init__(self, host: Host) -> None:
        from ceilometer_cmt.pollsters import runtime

        self.host = host
        self.ceilometer, self.is_disconnected = runtime.libvirt_connector(host.uri)
        self._wrapped: dict[int, tuple[Any, CountingConnection]] = {}

    def __call__(self) -> CountingConnection:
        raw = self.ceilometer()
        held = self._wrapped.get(id(raw))
        if held is None or held[0] is not raw:
            held = (raw, CountingConnection(raw, self.host.extra, self.host.calls))
            self._wrapped[id(raw)] = held
            self.host.conns.append(held[1])
        return held[1]

    @property
    def raw(self) -> Any:
        """The connection ceilometer's cache holds now."""
        return self.ceilometer._libvirt_connection  # type: ignore[attr-defined]


def test_ceilometer_connect_reconnects_after_libvirtd_restart(tmp_path):
    """The backend with the agent's connect: a libvirtd restart on the same
    socket costs one cycle (reported unmonitored with the reason, one WARNING),
    then ceilometer's refresh opens a new connection and the data is back."""
    warnings: list[str] = []
    insts = fakehost.make_instances(2)
    with LibvirtDaemon() as d:
        h = Host(d, str(tmp_path / "node.xml"), insts)
        for i in insts:
            h.extra[i.domain_name] = cache_keys([("m", "0", [(0, 4096)])])
        connect = CeilometerConnections(h)
        backend = LibvirtBackend(h.uri, connect=connect, is_disconnected=connect.is_disconnected,
                                 warn=warnings.append)
        try:
            refs = h.refs()
            for _ in range(2):
                cycle = backend.sync(refs)
                assert {u: r.occupancy for u, r in cycle.readings.items()} == {
                    i.uuid: {0: 4096} for i in insts}
            first = connect.raw
            assert backend.connects == 1

            socket_before = d.socket_path
            d.restart()
            assert d.socket_path == socket_before
            lost = backend.sync(refs)
            assert lost.readings == {}  # no value given: no reading, never a 0
            assert set(lost.unmonitored) == {i.uuid for i in insts}
            assert all("connection lost" in r for r in lost.unmonitored.values())
            assert len(warnings) == 1 and h.uri in warnings[0]

            for _ in range(2):
                back = backend.sync(refs)
                assert len(back.readings) == 2 and back.unmonitored == {}
            assert connect.raw is not first and connect.raw.isAlive()
            assert backend.connects == 2

            d.kill()  # down for two cycles: nothing raised, no second warning
            for _ in range(2):
                down = backend.sync(refs)
                assert down.readings == {}
                assert set(down.unmonitored) == {i.uuid for i in insts}
            assert len(warnings) == 2  # one per outage
            d.start()
            assert len(backend.sync(refs).readings) == 2
            assert backend.connects == 3
        finally:
            backend.close()


def test_ceilometer_refresh_is_what_reconnects(tmp_path):
    """ceilometer's refresh_libvirt_connection keeps the connection while it
    is alive and opens a new one once a restart of libvirtd has killed it;
    ceilometer's is_disconnection_exception recognises the failed call."""
    from ceilometer.compute.virt.libvirt import utils as libvirt_utils

    from ceilometer_cmt.pollsters import runtime

    insts = fakehost.make_instances(1)
    with LibvirtDaemon() as d:
        uri = d.uri_for(fakehost.write_node_xml(str(tmp_path / "node.xml"), insts))
        connect, is_disconnected = runtime.libvirt_connector(uri)
        assert is_disconnected is libvirt_utils.is_disconnection_exception
        conns: list[Any] = []
        try:
            first = connect()
            conns.append(first)
            assert connect() is first  # alive: the cached one
            assert first.lookupByName(insts[0].domain_name).UUIDString() == insts[0].uuid

            d.restart()
            with pytest.raises(libvirt.libvirtError) as failed:
                first.getAllDomainStats(0, 0)
            assert is_disconnected(failed.value)
            assert not first.isAlive()

            second = connect()  # ceilometer sees isAlive() false: a new connection
            conns.append(second)
            assert second is not first and second.isAlive()
            assert connect() is second
            assert [dom.name() for dom, _ in second.getAllDomainStats(0, 0)] == [
                insts[0].domain_name]
        finally:
            for c in conns:
                with contextlib.suppress(libvirt.libvirtError):
                    c.close()


def test_agent_runtime_polls_across_a_libvirtd_restart(tmp_path):
    """The whole agent path: [cmt] options -> pollsters' runtime -> registry
    entry built with ceilometer's helpers -> monitor cycles. The test driver
    gives no cache data, so libvirt answering shows as its no-data reason."""
    from oslo_config import cfg

    from ceilometer_cmt import options
    from ceilometer_cmt.backends.libvirt import stats as libvirt_stats
    from ceilometer_cmt.pollsters import runtime

    insts = fakehost.make_instances(2)
    with LibvirtDaemon() as d:
        uri = d.uri_for(fakehost.write_node_xml(str(tmp_path / "node.xml"), insts))
        conf = cfg.ConfigOpts()
        conf(args=[], default_config_files=[], default_config_dirs=[])
        options.register_opts(conf)
        conf.set_override("backend", "libvirt", group="cmt")
        conf.set_override("libvirt_uri", uri, group="cmt")
        conf.set_override("privsep", "never", group="cmt")
        try:
            rt = runtime.get_runtime(conf)
            assert rt.monitor is not None and rt.monitor.backend.name == "libvirt"
            backend = rt.monitor.backend
            assert isinstance(backend, LibvirtBackend)

            def reasons() -> set[str]:
                result = runtime.cycle(rt, {}, [Resource(i) for i in insts])
                assert result.instances == {}  # nothing given: no meter, never a 0
                assert set(result.unmonitored) == {i.uuid for i in insts}
                return set(result.unmonitored.values())

            assert reasons() == {libvirt_stats.REASON_NO_DATA}
            d.restart()
            lost = reasons()
            assert len(lost) == 1 and "connection lost" in lost.pop()
            assert reasons() == {libvirt_stats.REASON_NO_DATA}
            assert backend.connects == 2 and backend.stats_calls == 3
        finally:
            runtime.reset()


class Resource:
    """What ceilometer's local_instances discovery gives, as runtime reads it."""

    def __init__(self, inst: fakehost.FakeInstance) -> None:
        self.id = inst.uuid
        setattr(self, "OS-EXT-STS:vm_state", "running")
        setattr(self, "OS-EXT-SRV-ATTR:instance_name", inst.domain_name)
