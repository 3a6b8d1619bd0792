"""The daemon's rules as plain functions: names, thread ids, emulators, and
refusals logged once per rule per minute."""

from __future__ import annotations

import logging

import pytest

from ceilometer_cmt.privsep import rules as daemon_rules
from ceilometer_cmt.privsep.rules import QemuRule, check_ctrl, check_group_name, check_tids, refuse


def test_refusals_name_their_rule_and_are_logged_once_a_minute(
        caplog: pytest.LogCaptureFixture) -> None:
    daemon_rules._logged.clear()
    with caplog.at_level(logging.WARNING, logger="ceilometer_cmt.privsep.rules"):
        errors = [refuse("names", "odd", clock=t) for t in (1000.0, 1010.0, 1059.9)]
        refuse("threads", "a stranger", clock=1020.0)
        refuse("names", "odd again", clock=1060.0)
    assert all(str(e) == "refused by the ceilometer-cmt privsep daemon, rule names: odd"
               for e in errors)
    assert all(isinstance(e, PermissionError) for e in errors)
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 3, logged
    assert "(rule names): odd " in logged[0] and "(rule threads)" in logged[1]
    assert "(rule names): odd again" in logged[2]


def test_names() -> None:
    assert check_ctrl("") == "" and check_ctrl("qemu-1-vcpus_0-3") == "qemu-1-vcpus_0-3"
    assert check_group_name("ceilometer-x", "ceilometer-") == "ceilometer-x"
    for bad in ("qemu-1\n", ".", "info", "a/b", "\x00", "a" * 256, b"x", None):
        with pytest.raises(PermissionError, match="rule names"):
            check_ctrl(bad)
    with pytest.raises(PermissionError, match="rule prefix"):
        check_group_name("pqos-1", "ceilometer-")


def test_thread_ids() -> None:
    assert check_tids((1, 4194304)) == [1, 4194304]
    for bad in ([0], [4194305], [True], [1.0], ["1"], "1", None, [1] * 4097):
        with pytest.raises(PermissionError, match="rule threads"):
            check_tids(bad)


def test_emulators_by_basename_pattern_or_exact_path() -> None:
    rule = QemuRule("/run/libvirt/qemu")
    assert rule.is_emulator("/usr/bin/qemu-system-x86_64")
    assert rule.is_emulator("/usr/libexec/qemu-kvm")
    assert rule.is_emulator("/usr/bin/qemu-system-x86_64 (deleted)")  # upgraded under it
    assert not rule.is_emulator("/usr/bin/python3")
    assert not rule.is_emulator("/tmp/qemu-kvm-evil")
    exact = QemuRule("/run", emulators=("/opt/qemu/bin/qemu",))
    assert exact.is_emulator("/opt/qemu/bin/qemu")
    assert not exact.is_emulator("/home/x/opt/qemu/bin/qemu")
    assert QemuRule("/run", users=("root", "0", "no-such-user-cmt")).uids() == {0}
