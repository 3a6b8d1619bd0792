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
