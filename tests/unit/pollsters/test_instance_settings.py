"""One reader of an instance's ``cmt:`` settings for the agent and the guard:
the server metadata first, then the flavor's extra specs."""

from __future__ import annotations

import types

import pytest

from ceilometer_cmt.pollsters.instance_settings import guard_off, mbm_priority, setting


def _res(**kw: object) -> types.SimpleNamespace:
    return types.SimpleNamespace(id="u", **kw)


@pytest.mark.parametrize("kw,value", [
    ({}, None),
    ({"metadata": {}, "flavor": {"name": "m1"}}, None),
    ({"metadata": {"k": "meta"}, "flavor": {"extra_specs": {"k": "spec"}}}, "meta"),
    ({"metadata": {}, "flavor": {"extra_specs": {"k": "spec"}}}, "spec"),
    ({"metadata": {"other": "x"}, "flavor": {"extra_specs": {"k": "spec"}}}, "spec"),
    # present wins, even empty: an empty <nova:extraSpec/> is "" too
    ({"metadata": {"k": ""}, "flavor": {"extra_specs": {"k": "spec"}}}, ""),
    ({"flavor": {"extra_specs": {"k": None}}}, ""),
    ({"metadata": None, "flavor": None}, None),
    ({"metadata": "k=meta", "flavor": "m1.small"}, None),  # not dicts: nothing read
    ({"flavor": {"extra_specs": ["k"]}}, None),
    ({"metadata": {"k": 3}}, "3"),
])
def test_setting_metadata_then_extra_specs(kw: dict[str, object], value: str | None) -> None:
    assert setting(_res(**kw), "k") == value


@pytest.mark.parametrize("kw,off", [
    ({}, False),
    ({"metadata": {"cmt:guard": "off"}}, True),
    ({"metadata": {"cmt:guard": " OFF "}}, True),
    ({"metadata": {"cmt:guard": "on"}}, False),
    ({"metadata": {"cmt:guard": "of"}}, False),
    ({"metadata": {"cmt:guard": ""}}, False),
    ({"flavor": {"extra_specs": {"cmt:guard": "Off\n"}}}, True),
    # the instance's own metadata overrides its flavor, both ways
    ({"metadata": {"cmt:guard": "on"}, "flavor": {"extra_specs": {"cmt:guard": "off"}}}, False),
    ({"metadata": {"cmt:guard": "off"}, "flavor": {"extra_specs": {"cmt:guard": "on"}}}, True),
    ({"metadata": {"cmt:guard_": "off"}}, False),
])
def test_guard_off(kw: dict[str, object], off: bool) -> None:
    assert guard_off(_res(**kw)) is off


@pytest.mark.parametrize("kw,priority", [
    ({}, 0),
    ({"metadata": {"cmt:mbm_priority": " 7 "}}, 7),
    ({"metadata": {"cmt:mbm_priority": "x"}, "flavor": {"extra_specs":
                                                        {"cmt:mbm_priority": "5"}}}, 0),
    ({"flavor": {"extra_specs": {"cmt:mbm_priority": "-2"}}}, -2),
])
def test_mbm_priority(kw: dict[str, object], priority: int) -> None:
    assert mbm_priority(_res(**kw)) == priority
