"""The fake host's pure half: instances, their node XML, qemu's ``-name``."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from ceilometer_cmt.readings import InstanceRef
from ceilometer_cmt.testing.fakehost import (
    NOVA_NS,
    RUNSTATE_RUNNING,
    RUNSTATE_SHUTOFF,
    TEST_NS,
    make_instances,
    node_xml,
    qemu_name_arg,
    write_node_xml,
)


def test_instances_are_deterministic_and_distinct() -> None:
    first = make_instances(3)
    assert make_instances(3) == first
    assert [i.domain_name for i in first] == ["instance-00000001", "instance-00000002",
                                               "instance-00000003"]
    assert len({i.uuid for i in first}) == 3
    later = make_instances(1, running=False, start=4)[0]
    assert not later.running and later.uuid not in {i.uuid for i in first}
    assert first[0].ref == InstanceRef(first[0].uuid, "instance-00000001")


def test_node_xml_carries_nova_metadata_and_run_state() -> None:
    insts = make_instances(1) + make_instances(1, running=False, start=2)
    root = ET.fromstring(node_xml(insts, cpus=8))
    domains = root.findall("domain")
    assert [d.findtext("name") for d in domains] == [i.domain_name for i in insts]
    states = [d.findtext(f"{{{TEST_NS}}}runstate") for d in domains]
    assert states == [str(RUNSTATE_RUNNING), str(RUNSTATE_SHUTOFF)]
    nova = domains[0].find(f"metadata/{{{NOVA_NS}}}instance")
    assert nova is not None
    assert nova.findtext(f"{{{NOVA_NS}}}name") == insts[0].display_name
    assert root.findtext("cpu/active") == "8"


def test_write_node_xml_replaces_the_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "node.xml")
    write_node_xml(path, make_instances(2))
    assert write_node_xml(path, make_instances(1)) == path
    assert len(ET.parse(path).getroot().findall("domain")) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node.xml"]


def test_qemu_name_doubles_commas() -> None:
    assert qemu_name_arg("instance-1") == "guest=instance-1,debug-threads=on"
    assert qemu_name_arg("a,b") == "guest=a,,b,debug-threads=on"
