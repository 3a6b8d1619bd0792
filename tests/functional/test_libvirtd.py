"""The private libvirtd: it starts, answers, restarts and leaves nothing behind."""

from __future__ import annotations

import os

import pytest

from ceilometer_cmt.testing import fakehost
from ceilometer_cmt.testing.libvirtd import DaemonError, LibvirtDaemon
from tests.support.libvirtd import needs_libvirtd
from tests.support.procutil import alive, processes_mentioning

libvirt = pytest.importorskip("libvirt")

pytestmark = needs_libvirtd


@pytest.fixture
def daemon():
    with LibvirtDaemon() as d:
        yield d


def test_libvirtd_starts_answers_and_stops_without_leftovers():
    run_libvirt_existed = os.path.exists("/run/libvirt")
    d = LibvirtDaemon()
    d.start()
    try:
        pid, base = d.pid, d.base_dir
        assert pid is not None and base is not None
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            assert b"libvirtd" in f.read()
        conn = libvirt.open(d.default_uri)
        try:
            assert conn.getType() == "TEST"
            assert [dom.name() for dom in conn.listAllDomains()] == ["test"]
        finally:
            conn.close()
    finally:
        d.stop()
    assert not alive(pid)
    assert not os.path.exists(base)
    assert processes_mentioning(base) == []
    if not run_libvirt_existed:
        assert not os.path.exists("/run/libvirt"), "libvirtd wrote into the host's /run"


def test_libvirtd_that_fails_to_start_leaves_nothing(tmp_path):
    d = LibvirtDaemon(binary="/bin/false", start_timeout=5)
    with pytest.raises(DaemonError, match="exited"):
        d.start()
    assert d.proc is None and d.base_dir is None


def test_libvirtd_restart_drops_clients_and_serves_again(daemon, tmp_path):
    running = fakehost.make_instances(3)
    stopped = fakehost.make_instances(1, running=False, start=100)
    uri = daemon.uri_for(fakehost.write_node_xml(str(tmp_path / "node.xml"), running + stopped))
    conn = libvirt.open(uri)
    old_pid = daemon.pid
    daemon.restart()
    assert daemon.pid != old_pid and not alive(old_pid)
    with pytest.raises(libvirt.libvirtError):
        conn.listAllDomains()
    conn2 = libvirt.open(uri)
    try:
        assert len(conn2.listAllDomains()) == len(running) + len(stopped)
    finally:
        conn2.close()
    assert processes_mentioning(daemon.base_dir) == [daemon.pid]
