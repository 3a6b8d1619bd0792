"""The guard's side of the daemon: :class:`PrivsepCatOps` sends the names as
they are, plain types only, and gives the daemon's answers back as the
protocol's types."""

from __future__ import annotations

import pytest

from ceilometer_cmt.guard.ops import CatOps
from ceilometer_cmt.privsep import cat_entrypoints

UUID = "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab"


def test_privsep_cat_ops_send_names(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[object, ...]] = []
    for name in ("make_cap_group", "remove_cap_group", "write_cap_schemata"):
        monkeypatch.setattr(cat_entrypoints, name,
                            lambda *a, name=name: sent.append((name, *a)))

    def move(*a: object) -> list[list[int]]:
        sent.append(("move_cap_threads", *a))
        return [[12, 3]]  # msgpack gives lists back

    monkeypatch.setattr(cat_entrypoints, "move_cap_threads", move)
    ops: CatOps = cat_entrypoints.PrivsepCatOps()
    ops.make_ctrl_group("ceilometer-cap-25")
    ops.write_schemata("ceilometer-cap-25", ["L3:0=3\n"])
    assert ops.move_threads("ceilometer-cap-25", UUID, "instance-1", [11, 12]) == [(12, 3)]
    ops.remove_ctrl_group("ceilometer-cap-25")
    assert sent == [("make_cap_group", "ceilometer-cap-25"),
                    ("write_cap_schemata", "ceilometer-cap-25", ["L3:0=3\n"]),
                    ("move_cap_threads", "ceilometer-cap-25", UUID, "instance-1", [11, 12]),
                    ("remove_cap_group", "ceilometer-cap-25")]
