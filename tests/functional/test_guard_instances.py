"""The guard's instances through a real private libvirtd and ceilometer's
real discovery: ``cmt:guard=off`` from a flavor's extra specs as Nova 2025.2
writes them into libvirt's metadata, and from the server metadata that
ceilometer asks the Nova API for (only the Nova client is a stub: no Nova
runs here); libvirtd gone, the listing raises."""

from __future__ import annotations

from typing import Any

import pytest

from ceilometer_cmt.cmd import guard_instances
from ceilometer_cmt.guard.observe import GuardInstance
from ceilometer_cmt.testing import fakehost
from ceilometer_cmt.testing.libvirtd import LibvirtDaemon
from tests.support.libvirtd import needs_libvirtd
from tests.unit.cmd.test_guard_instances import OFF, guard_conf, node_with_specs

pytest.importorskip("libvirt")

pytestmark = needs_libvirtd


@pytest.fixture
def daemon():
    with LibvirtDaemon() as d:
        yield d


def test_the_flavor_opt_out_through_libvirtd(daemon: LibvirtDaemon, tmp_path: Any) -> None:
    a, b = fakehost.make_instances(2)
    node = node_with_specs(str(tmp_path / "node.xml"), [a, b], {a.uuid: OFF})
    listed = guard_instances.lister(guard_conf(tmp_path, daemon.uri_for(node)))
    assert sorted(listed(), key=str) == [GuardInstance(a.uuid, a.domain_name, True, a.project_id),
                                         GuardInstance(b.uuid, b.domain_name, False, b.project_id)]
    daemon.kill()
    with pytest.raises(guard_instances.DiscoveryFailed):
        listed()


class Servers:
    """The one Nova API call ceilometer's libvirt_metadata discovery makes
    with ``fetch_extra_metadata``: ``nova_client.servers.get(uuid)``."""

    def __init__(self, metadata: dict[str, dict[str, str]]) -> None:
        self.metadata = metadata
        self.asked: list[str] = []

    def get(self, uuid: str) -> Any:
        from ceilometer.compute.discovery import NovaLikeServer

        self.asked.append(uuid)
        return NovaLikeServer(id=uuid, metadata=self.metadata.get(uuid, {}))


def test_the_server_metadata_opt_out(daemon: LibvirtDaemon, tmp_path: Any,
                                     monkeypatch: Any) -> None:
    from ceilometer import nova_client

    a, b, c = fakehost.make_instances(3)
    # b's own metadata overrides its flavor's opt-out
    node = node_with_specs(str(tmp_path / "node.xml"), [a, b, c], {b.uuid: OFF})
    servers = Servers({a.uuid: {"cmt:guard": " Off "}, b.uuid: {"cmt:guard": "on"}})
    real_init = nova_client.Client.__init__

    def init(self: Any, conf: Any) -> None:
        real_init(self, conf)
        monkeypatch.setattr(self.nova_client, "servers", servers)

    monkeypatch.setattr(nova_client.Client, "__init__", init)
    listed = guard_instances.lister(guard_conf(
        tmp_path, daemon.uri_for(node), "[compute]\nfetch_extra_metadata = true\n"))
    assert sorted(listed(), key=str) == [GuardInstance(a.uuid, a.domain_name, True, a.project_id),
                                         GuardInstance(b.uuid, b.domain_name, False, b.project_id),
                                         GuardInstance(c.uuid, c.domain_name, False, c.project_id)]
    assert sorted(servers.asked) == sorted(i.uuid for i in (a, b, c))
    # without fetch_extra_metadata ceilometer asks nothing: the flavor decides
    servers.asked.clear()
    listed = guard_instances.lister(guard_conf(tmp_path, daemon.uri_for(node)))
    assert [i.uuid for i in listed() if i.exempt] == [b.uuid]
    assert servers.asked == []
