"""The daemon's rules as plain functions: names, thread ids, emulators, and
refusals logged once per rule per minute."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ceilometer_cmt.privsep import rules as daemon_rules
from ceilometer_cmt.privsep.rules import (
    Qemu,
    QemuRule,
    check_ctrl,
    check_group_name,
    check_tids,
    refuse,
)


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


# ------------------------------------------------ QemuRule over a /proc it is given
# The rule reads its configured proc_root itself, with the kernel's own fields,
# not through psutil (doc/psutil.md): these pin what psutil would read otherwise.
EMULATOR = "/usr/bin/qemu-system-x86_64"


def _proc_of_me(root: Path, *, uids: str, exe: str, cmdline: bytes) -> Qemu:
    """A fixture ``<root>/<our pid>/`` (status, exe, cmdline) and a pidfd on us."""
    base = root / str(os.getpid())
    base.mkdir(parents=True)
    (base / "status").write_text(f"Name:\tqemu\nUid:\t{uids}\nGid:\t0\t0\t0\t0\n")
    (base / "exe").symlink_to(exe)
    (base / "cmdline").write_bytes(cmdline)
    return Qemu(os.getpid(), os.pidfd_open(os.getpid()))


def _rule(root: Path) -> QemuRule:
    return QemuRule("/run", proc_root=str(root), emulators=(EMULATOR,), users=("4242",))


QEMU_ARGV = b"qemu\x00-name\x00guest=instance-1,debug-threads=on\x00"


def test_qemu_rule_reads_its_own_proc_root(tmp_path: Path) -> None:
    qemu = _proc_of_me(tmp_path, uids="4242\t4242\t4242\t4242", exe=EMULATOR, cmdline=QEMU_ARGV)
    try:
        _rule(tmp_path)._check(qemu, "instance-1")
        with pytest.raises(PermissionError, match=r"rule qemu: .* not the qemu of 'instance-2'"):
            _rule(tmp_path)._check(qemu, "instance-2")
    finally:
        qemu.close()


@pytest.mark.parametrize("uids,exe,cmdline,why", [
    # the fs uid (4th field) counts too; psutil's uids() has only three
    ("4242\t4242\t4242\t0", EMULATOR, QEMU_ARGV, "runs as uid"),
    # argv[0] never stands for the exe; psutil's exe() guesses it from argv[0]
    # when the exe link cannot be read
    ("4242\t4242\t4242\t4242", "/usr/bin/python3", EMULATOR.encode() + QEMU_ARGV[4:],
     "not a configured emulator"),
    # a rewritten argv without NULs is one argument; psutil splits it on spaces
    ("4242\t4242\t4242\t4242", EMULATOR, b"qemu -name guest=instance-1", "not the qemu"),
])
def test_qemu_rule_refuses_what_psutil_would_read_otherwise(
        tmp_path: Path, uids: str, exe: str, cmdline: bytes, why: str) -> None:
    qemu = _proc_of_me(tmp_path, uids=uids, exe=exe, cmdline=cmdline)
    try:
        with pytest.raises(PermissionError, match=f"rule qemu: .*{why}"):
            _rule(tmp_path)._check(qemu, "instance-1")
    finally:
        qemu.close()


def test_thread_of_another_process_is_a_stranger_not_gone() -> None:
    """A non-leader thread of another process is refused: ``/proc/<tid>``
    answers for it (psutil.pid_exists says False for any non-leader tid, which
    would let it pass as a thread that exited)."""
    other = threading.Event()
    thread = threading.Thread(target=other.wait, daemon=True)
    thread.start()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        qemu = Qemu(child.pid, os.pidfd_open(child.pid))
        try:
            rule = QemuRule("/run")
            assert rule.check_threads(qemu, [child.pid]) == set()
            stranger = thread.native_id
            assert stranger is not None and stranger != os.getpid()
            with pytest.raises(PermissionError, match=rf"rule threads: .*\[{stranger}\]"):
                rule.check_threads(qemu, [child.pid, stranger])
        finally:
            qemu.close()
    finally:
        other.set()
        child.kill()
        child.wait()


# ------------------------------------------------------------ MBM counter assignment lines
def test_assignment_lines_accepted() -> None:
    from ceilometer_cmt.backends.resctrl.assign_files import format_assignment

    ok = ["mbm_total_bytes:0=e;1=e\n", "mbm_local_bytes:*=_", "mbm_total_bytes:0=_;17=e\n",
          format_assignment("mbm_local_bytes", dict.fromkeys(range(256), True))]
    assert daemon_rules.check_assignment_lines(ok) == [
        line if line.endswith("\n") else line + "\n" for line in ok]


@pytest.mark.parametrize("lines", [
    [], "mbm_total_bytes:0=e\n", None, [42], [b"mbm_total_bytes:0=e\n"],
    ["mbm_total_bytes:0=e\n"] * 9,
    ["llc_occupancy:0=e\n"], ["mbm_total_bytes_config:0=e\n"], ["MBM_TOTAL_BYTES:0=e\n"],
    ["mbm_total_bytes:0=e\n../../tasks"], ["mbm_total_bytes:0=e\nmbm_local_bytes:0=e\n"],
    ["mbm_total_bytes:0=e\n\n"], ["mbm_total_bytes:0=e\r"], ["mbm_total_bytes:0=e\x00"],
    ["mbm_total_bytes:*=e;1=_"], ["mbm_total_bytes:*=e;../../tasks"], ["mbm_total_bytes:-1=e"],
    ["mbm_total_bytes:\u0661=e"], ["mbm_total_bytes:0x1=e"], ["mbm_total_bytes:12345=e"],
    ["mbm_total_bytes:0=ee"], ["mbm_total_bytes:0=E"], ["mbm_total_bytes:0=e;"],
    ["mbm_total_bytes: 0=e"], ["mbm_total_bytes:"], ["mbm_total_bytes"], [""], ["\n"],
    ["mbm_total_bytes:" + ";".join(f"{i % 10}=e" for i in range(600))],
])
def test_assignment_lines_refused(lines: object) -> None:
    with pytest.raises(OSError, match="rule assignments: ") as e:
        daemon_rules.check_assignment_lines(lines)
    assert e.value.errno == errno.EINVAL
    assert len(str(e.value)) < 400  # a huge line is not echoed back whole


@given(st.text(max_size=40))
def test_assignment_lines_only_the_two_events(line: str) -> None:
    try:
        out = daemon_rules.check_assignment_lines([line])
    except OSError:
        return
    body = out[0]
    assert body.count("\n") == 1 and body.endswith("\n")
    assert body.split(":", 1)[0] in ("mbm_total_bytes", "mbm_local_bytes")
