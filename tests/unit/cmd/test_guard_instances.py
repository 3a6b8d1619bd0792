"""The guard's instances from ceilometer's real discovery, on libvirt's test
driver (``test:///node.xml``, in process): running instances only, named as
the agent names them, ``cmt:guard=off`` from the flavor's extra specs; a
failing discovery raises, never an empty list."""

from __future__ import annotations

from typing import Any

import pytest

from ceilometer_cmt.cmd import guard_instances
from ceilometer_cmt.guard.observe import GuardInstance
from ceilometer_cmt.testing import fakehost

pytest.importorskip("libvirt")

OTHER = "9a8b7c6d5e4f40312a1b0c9d8e7f6a50"  # a second project
OFF = ('<nova:extraSpecs><nova:extraSpec name="cmt:guard"> OFF </nova:extraSpec>'
       '</nova:extraSpecs></nova:flavor>')


def node_with_specs(path: str, insts: list[fakehost.FakeInstance],
                    specs: dict[str, str]) -> str:
    """A node file whose instances ``specs`` names get that flavor markup."""
    xml = fakehost.node_xml(insts)
    for inst in insts:
        if inst.uuid in specs:
            one = fakehost.domain_xml(inst)
            xml = xml.replace(one, one.replace("</nova:flavor>", specs[inst.uuid]))
    with open(path, "w", encoding="utf-8") as f:
        f.write(xml)
    return path


def guard_conf(tmp_path: Any, uri: str, extra: str = "") -> Any:
    """The guard's conf as its load_conf builds it, with register_opts."""
    from oslo_config import cfg

    from ceilometer_cmt import options

    path = tmp_path / "ceilometer.conf"
    path.write_text(f"[DEFAULT]\nhost = compute-7\nlibvirt_uri = {uri}\n{extra}")
    conf = cfg.ConfigOpts()
    options.register_opts(conf)
    options.register_guard_opts(conf)
    guard_instances.register_opts(conf)
    conf(args=[], project="ceilometer", default_config_files=[str(path)])
    return conf


def test_running_instances_with_the_flavor_opt_out(tmp_path: Any) -> None:
    """Each with its own project, which the guard's notifications carry."""
    [a], [b] = fakehost.make_instances(1), fakehost.make_instances(1, start=2, project_id=OTHER)
    stopped = fakehost.make_instances(1, running=False, start=9)
    node = node_with_specs(str(tmp_path / "node.xml"), [a, b, *stopped], {
        a.uuid: OFF, stopped[0].uuid: OFF,
        b.uuid: OFF.replace("cmt:guard", "cmt:mbm_priority").replace(" OFF ", "3")})
    listed = guard_instances.lister(guard_conf(tmp_path, f"test://{node}"))
    assert sorted(listed(), key=str) == [GuardInstance(a.uuid, a.domain_name, True, a.project_id),
                                GuardInstance(b.uuid, b.domain_name, False, b.project_id)]


def test_a_failed_discovery_raises(tmp_path: Any) -> None:
    """The guard's cycle warns and changes nothing (an empty list would
    release every cap)."""
    listed = guard_instances.lister(guard_conf(tmp_path, f"test://{tmp_path}/missing.xml"))
    with pytest.raises(guard_instances.DiscoveryFailed, match="libvirt_metadata"):
        listed()


class Server:
    def __init__(self, metadata: dict[str, str]) -> None:
        self.metadata = metadata


def test_server_metadata_with_fetch_extra_metadata(tmp_path: Any, monkeypatch: Any) -> None:
    """With ``[compute] fetch_extra_metadata``, ceilometer asks Nova for each
    server: only its Nova client is a stub here."""
    from ceilometer.compute import discovery

    a, b = fakehost.make_instances(2)
    node = fakehost.write_node_xml(str(tmp_path / "node.xml"), [a, b])
    asked: list[str] = []

    def get(uuid: str) -> Server:
        asked.append(uuid)
        return Server({"cmt:guard": "off"} if uuid == b.uuid else {"cmt:guard": "on"})

    real_init = discovery.InstanceDiscovery.__init__

    def init(self: Any, conf: Any) -> None:
        real_init(self, conf)
        monkeypatch.setattr(self.nova_cli.nova_client.servers, "get", get)

    monkeypatch.setattr(discovery.InstanceDiscovery, "__init__", init)
    listed = guard_instances.lister(guard_conf(
        tmp_path, f"test://{node}", "[compute]\nfetch_extra_metadata = true\n"))
    assert sorted(listed(), key=str) == [GuardInstance(a.uuid, a.domain_name, False, a.project_id),
                                GuardInstance(b.uuid, b.domain_name, True, b.project_id)]
    assert sorted(asked) == sorted([a.uuid, b.uuid])
