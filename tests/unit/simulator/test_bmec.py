"""BMEC (``info/L3_MON/mbm_{total,local}_bytes_config``) in the simulator's
state machine: formats, the parser's errors, and the reset a change makes
(fs/resctrl/rdtgroup.c ``mon_config_write()``, ``mbm_config_write_domain()``).
"""

from __future__ import annotations

import errno

from ceilometer_cmt.simulator.errors import SimError
from ceilometer_cmt.simulator.model import Model
from ceilometer_cmt.simulator.tree import resolve
from tests.unit.simulator.test_assign import (
    MiB,
    advance,
    busy_model,
    entries,
    errno_of,
    read,
    status,
    write,
)

TOTAL = "info/L3_MON/mbm_total_bytes_config"
LOCAL = "info/L3_MON/mbm_local_bytes_config"


def default_mode_model() -> Model:
    m = busy_model()
    write(m, "info/L3_MON/mbm_assign_mode", b"default\n")
    return m


def test_config_files_read_in_default_mode_only() -> None:
    m = busy_model()
    assert "mbm_local_bytes_config" not in entries(m, "info/L3_MON")
    node = resolve(m, ("info", "L3_MON"))
    assert node is not None
    write(m, "info/L3_MON/mbm_assign_mode", b"default\n")
    assert read(m, TOTAL) == "0=0x7f;1=0x7f\n"
    assert read(m, LOCAL) == "0=0x15;1=0x15\n"
    # an fd kept open while mbm_event mode hides the file: ENODEV
    held = resolve(m, tuple(TOTAL.split("/")))
    write(m, "info/L3_MON/mbm_assign_mode", b"mbm_event\n")
    try:
        held.read()  # type: ignore[union-attr]
    except SimError as e:
        assert e.errno == errno.ENODEV
    else:
        raise AssertionError("read of a hidden BMEC file succeeded")


def test_config_write_parses_like_the_kernel() -> None:
    m = default_mode_model()
    write(m, LOCAL, b"0=0x33;1=5\n")
    assert read(m, LOCAL) == "0=0x33;1=0x05\n"
    cases = [
        (b"0=0x10", errno.EINVAL, "before\n"),  # no newline: status untouched
        (b"x=0x10\n", errno.EINVAL, "Missing '=' or non-numeric domain id\n"),
        (b"0\n", errno.EINVAL, "Non-numeric event configuration value\n"),
        (b"0=zz\n", errno.EINVAL, "Non-numeric event configuration value\n"),
        (b"0=0x80\n", errno.EINVAL, "Invalid event configuration: max valid mask is 0x7f\n"),
        (b"9=0x10\n", errno.EINVAL, ""),  # unknown domain: no message
    ]
    for data, err, text in cases:
        m.status = "before\n"
        assert errno_of(lambda d=data: write(m, LOCAL, d)) == err  # type: ignore[misc]
        assert m.status == text, data
    # domains before the bad entry keep their new value
    assert errno_of(lambda: write(m, LOCAL, b"0=0x01;1=0x99\n")) == errno.EINVAL
    assert read(m, LOCAL) == "0=0x01;1=0x05\n"


def test_a_change_resets_both_events_of_the_domain_and_reads_unavailable_once() -> None:
    m = default_mode_model()
    m.mkdir(("mon_groups", "a"))
    advance(m, 4)
    root = "mon_data/mon_L3_00"
    assert read(m, f"{root}/mbm_total_bytes") == f"{4 * MiB}\n"
    write(m, LOCAL, b"0=0x15;1=0x15\n")  # the same value: nothing happens
    assert read(m, f"{root}/mbm_local_bytes") == f"{4 * MiB}\n"
    write(m, LOCAL, b"0=0x05\n")
    assert status(m) == "ok\n"
    assert read(m, "mon_groups/a/mon_data/mon_L3_00/mbm_total_bytes") == "Unavailable\n"
    # the root's read takes its own RMID's Unavailable; a's RMID answers 0 now,
    # and a CTRL_MON group shows the sum of the reads that worked
    assert read(m, f"{root}/mbm_total_bytes") == "0\n"
    # both RMIDs still fail for the other event: Unavailable
    assert read(m, f"{root}/mbm_local_bytes") == "Unavailable\n"
    assert read(m, "mon_groups/a/mon_data/mon_L3_00/mbm_local_bytes") == "0\n"
    assert read(m, f"{root}/mbm_local_bytes") == "0\n"
    assert read(m, "mon_data/mon_L3_01/mbm_total_bytes") == f"{4 * MiB}\n"  # other domain
    m.mkdir(("mon_groups", "b"))  # mkdir's own first read takes the Unavailable
    advance(m, 1)
    assert read(m, f"{root}/mbm_total_bytes") == f"{MiB}\n"
    assert read(m, "mon_groups/b/mon_data/mon_L3_00/mbm_total_bytes") == "0\n"


def test_scheduled_bmec_action() -> None:
    m = busy_model(faults=[
        {"at": 1, "action": "assign_mode", "value": "default"},
        {"at": 2, "action": "bmec_config", "event": "mbm_total_bytes", "value": "1=0x01"},
    ])
    advance(m, 3)
    assert read(m, TOTAL) == "0=0x7f;1=0x01\n"
    assert read(m, "mon_data/mon_L3_01/mbm_local_bytes") == "Unavailable\n"
    assert read(m, "mon_data/mon_L3_01/mbm_local_bytes") == f"{MiB}\n"
