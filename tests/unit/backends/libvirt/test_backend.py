"""The libvirt backend's connection handling, with stand-in connections.

The backend takes its connection from a plain ``connect`` callable (in the
agent: ceilometer's refresh_libvirt_connection) and asks ``is_disconnected``
(ceilometer's is_disconnection_exception) what a failed call means; nothing
it does may raise out of a cycle or turn a missing value into 0.
"""

from __future__ import annotations

from typing import Any

import pytest

from ceilometer_cmt.backends.libvirt.backend import LibvirtBackend, Reconnecting
from ceilometer_cmt.errors import BackendUnavailable
from ceilometer_cmt.readings import InstanceRef
from tests.unit.backends.libvirt.test_stats import cache_keys

libvirt = pytest.importorskip("libvirt")
Err = libvirt.libvirtError  # what the backend catches from libvirt calls

REF = InstanceRef("6c1f6a47-3d2b-4f34-a4f9-1d5f1d1f0a01", "instance-00000001")


class Dom:
    def name(self) -> str:
        return REF.domain_name

    def UUIDString(self) -> str:  # noqa: N802
        return REF.uuid

    def ID(self) -> int:  # noqa: N802
        return 7


class Conn:
    """A virConnect stand-in: answers, or fails with ``error``; dies on demand."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.alive = True
        self.closed = False
        self.calls = 0

    def getAllDomainStats(self, stats: int, flags: int = 0) -> list[Any]:  # noqa: N802
        self.calls += 1
        if self.error is not None:
            raise self.error
        return [(Dom(), {"state.state": 1, **cache_keys([("m", "0", [(0, 4096)])])})]

    def getCapabilities(self) -> str:  # noqa: N802
        raise Err("no capabilities here")

    def isAlive(self) -> bool:  # noqa: N802
        if self.closed:
            raise Err("invalid connection pointer")  # what a closed virConnect does
        return self.alive

    def close(self) -> int:
        self.closed = True
        return 0


class Refresh:
    """ceilometer's refresh_libvirt_connection rule: the held one while alive."""

    def __init__(self, *conns: Conn | Exception) -> None:
        self.queue = list(conns)
        self.held: Conn | None = None
        self.opened = 0

    def __call__(self) -> Conn:
        if self.held is None or not self.held.isAlive():
            nxt = self.queue.pop(0)
            self.opened += 1
            if isinstance(nxt, Exception):
                raise nxt
            self.held = nxt
        return self.held


def backend(connect: Any, **kw: Any) -> LibvirtBackend:
    return LibvirtBackend("test:///x", connect=connect, **kw)


def test_reconnecting_keeps_a_live_connection_and_replaces_a_dead_one() -> None:
    made: list[Conn] = []

    def opener() -> Conn:
        made.append(Conn())
        return made[-1]

    connect = Reconnecting(opener)
    first = connect()
    assert connect() is first and len(made) == 1
    first.alive = False
    second = connect()
    assert second is not first and first.closed and len(made) == 2
    second.close()  # closed: isAlive raises, which means "not alive"
    assert connect() is made[2]


def test_connect_is_asked_every_cycle_and_a_new_connection_is_counted() -> None:
    a, b = Conn(), Conn()
    refresh = Refresh(a, b)
    be = backend(refresh)
    assert be.connects == 1 and refresh.opened == 1
    assert REF.uuid in be.sync([REF]).readings
    a.alive = False  # e.g. libvirtd restarted between two cycles
    cycle = be.sync([REF])
    assert REF.uuid in cycle.readings and be.connects == 2 and b.calls == 1
    assert not a.closed  # connect owns its connections


def test_disconnection_costs_one_cycle_reported_unmonitored() -> None:
    warnings: list[str] = []
    lost = Err("End of file while reading data")
    a, b = Conn(error=lost), Conn()
    refresh = Refresh(a, b)
    be = backend(refresh, is_disconnected=lambda e: e is lost, warn=warnings.append)
    cycle = be.sync([REF])
    assert cycle.readings == {}
    assert cycle.unmonitored == {REF.uuid: f"libvirt connection lost: {lost}"}
    assert len(warnings) == 1
    a.alive = False  # what libvirt says after such an error
    assert REF.uuid in be.sync([REF]).readings and be.connects == 2


def test_an_error_is_disconnection_when_connection_is_dead_even_if_not_classified() -> None:
    warnings: list[str] = []
    a = Conn(error=Err("cut"))
    be = backend(Refresh(a, Conn()), warn=warnings.append)

    def die(*_a: Any) -> Any:
        a.alive = False
        raise Err("cut")

    a.getAllDomainStats = die  # type: ignore[method-assign]
    assert be.sync([REF]).unmonitored == {REF.uuid: "libvirt connection lost: cut"}
    assert len(warnings) == 1


def test_other_errors_keep_the_connection_and_a_bad_classifier_is_harmless() -> None:
    def broken(_e: BaseException) -> bool:
        raise RuntimeError("classifier bug")

    warnings: list[str] = []
    a = Conn(error=Err("unsupported flags"))
    refresh = Refresh(a)
    be = backend(refresh, is_disconnected=broken, warn=warnings.append)
    for _ in range(2):
        cycle = be.sync([REF])
        assert cycle.unmonitored == {REF.uuid: "libvirt stats call failed: unsupported flags"}
    assert warnings == [] and refresh.opened == 1 and be.connects == 1


def test_unreachable_libvirt_never_raises_out_of_a_cycle() -> None:
    warnings: list[str] = []
    a = Conn()
    refresh = Refresh(a, *[Err("no socket")] * 4, Conn())  # 2 cycles + 2 probes
    be = backend(refresh, warn=warnings.append)
    a.alive = False
    for _ in range(2):
        cycle = be.sync([REF])
        assert cycle.readings == {} and cycle.monitors_used is None
        assert cycle.unmonitored[REF.uuid].startswith("libvirt unreachable at test:///x")
        assert be.domains_with_cache_data() == 0
    assert len(warnings) == 1
    assert REF.uuid in be.sync([REF]).readings


def test_connect_failing_at_start_is_backend_unavailable() -> None:
    with pytest.raises(BackendUnavailable, match="cannot connect"):
        backend(Refresh(Err("refused")))
    be = backend(Refresh(Err("refused"), Conn()), connect_now=False)
    assert be.connects == 0


def test_host_cache_falls_back_to_sysfs_when_capabilities_fail(tmp_path: Any) -> None:
    be = backend(Refresh(Conn()), sysfs_root=str(tmp_path))
    assert be.host_cache().source == "sysfs"


def test_a_classified_disconnection_on_a_live_connection_is_not_a_reconnect() -> None:
    hiccup = Err("internal error: client socket is closed")
    a = Conn(error=hiccup)
    be = backend(Refresh(a), is_disconnected=lambda e: e is hiccup, warn=lambda _m: None)
    assert be.sync([REF]).unmonitored == {REF.uuid: f"libvirt connection lost: {hiccup}"}
    a.error = None  # still alive, answers again: the same connection
    assert REF.uuid in be.sync([REF]).readings and be.connects == 1
