"""From a libvirt domain name to its qemu process: parsers, hostile names, real processes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from ceilometer_cmt.errors import InstanceGone
from ceilometer_cmt.linux.procfs import (
    QemuProcess,
    check_domain_name,
    cmdline_names_guest,
    find_qemu_process,
    list_tids,
    parse_cmdline,
    parse_pidfile,
)
from ceilometer_cmt.testing.fakehost import StandInQemu, qemu_name_arg
from ceilometer_cmt.testing.kernel_trees import build_proc, qemu_cmdline

PID_MAX = 4194304
FIXTURE_OK = settings(suppress_health_check=[HealthCheck.function_scoped_fixture],
                      deadline=None)


# ---------------------------------------------------------------- parse_pidfile
@pytest.mark.parametrize("text,pid", [
    ("1234\n", 1234), ("1", 1), ("  77  \n", 77), ("0042\n", 42), (f"{PID_MAX}", PID_MAX),
])
def test_parse_pidfile_values(text: str, pid: int) -> None:
    assert parse_pidfile(text) == pid


@pytest.mark.parametrize("text", [
    "", "\n", "0", "-5", "+5", "12 34", "12\n34\n", "0x10", "1e3", "12.0", "abc",
    f"{PID_MAX + 1}", "99999999999", "1" * 64, "\x00", "12\x00", "\u0663\u0663",
    "\uff11\uff12",
])
def test_parse_pidfile_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        parse_pidfile(text)


@given(st.integers(min_value=1, max_value=PID_MAX), st.sampled_from(["", "\n", " \n", "\t"]))
def test_parse_pidfile_roundtrip(pid: int, tail: str) -> None:
    assert parse_pidfile(f"{pid}{tail}") == pid


@given(st.text(max_size=24))
@example("0")
@example("4194305")
def test_parse_pidfile_any_text(text: str) -> None:
    try:
        pid = parse_pidfile(text)
    except ValueError:
        return
    assert 1 <= pid <= PID_MAX
    assert text.strip().isascii() and int(text.strip()) == pid


# ---------------------------------------------------------------- parse_cmdline
@pytest.mark.parametrize("raw,argv", [
    (b"", []),
    (b"\x00", []),
    (b"qemu\x00-name\x00guest=a\x00", ["qemu", "-name", "guest=a"]),
    (b"qemu\x00-S", ["qemu", "-S"]),  # no trailing NUL (process rewrote its argv)
    # spaces never split, NUL-terminated or not (psutil's cmdline() splits a
    # rewritten argv on spaces, one reason the plugin keeps its own: doc/psutil.md)
    (b"qemu -name guest=a", ["qemu -name guest=a"]),
    (b"a\x00\x00", ["a", ""]),
    (b"\xff\xfe\x00x\x00", ["\udcff\udcfe", "x"]),
])
def test_parse_cmdline_values(raw: bytes, argv: list[str]) -> None:
    assert parse_cmdline(raw) == argv


_ARG = st.binary(max_size=12).filter(lambda b: b"\x00" not in b)


@given(st.lists(_ARG, min_size=1, max_size=8).filter(lambda a: a != [b""]))
def test_parse_cmdline_roundtrip(args: list[bytes]) -> None:
    raw = b"".join(a + b"\x00" for a in args)
    parsed = parse_cmdline(raw)
    assert [os.fsencode(a) for a in parsed] == args


@given(st.binary(max_size=64))
def test_parse_cmdline_any_bytes(raw: bytes) -> None:
    argv = parse_cmdline(raw)
    assert all("\x00" not in a for a in argv)
    assert b"\x00".join(os.fsencode(a) for a in argv) == raw.removesuffix(b"\x00")


# ---------------------------------------------------------- cmdline_names_guest
@pytest.mark.parametrize("argv,name,expected", [
    (["qemu", "-name", "guest=instance-1,debug-threads=on"], "instance-1", True),
    (["qemu", "-name", "guest=instance-1"], "instance-1", True),
    (["qemu", "-name", "instance-1"], "instance-1", True),  # old libvirt: plain -name X
    (["qemu", "-name", "instance-1,process=qemu:x"], "instance-1", True),
    (["qemu", "-name", "guest=instance-1,debug-threads=on"], "instance-12", False),
    (["qemu", "-name", "guest=instance-12,debug-threads=on"], "instance-1", False),
    (["qemu", "-name", "guest=a,,b,debug-threads=on"], "a,b", True),
    (["qemu", "-name", "guest=a,,b,debug-threads=on"], "a", False),
    (["qemu", "-name", "guest=a,b"], "a,b", False),  # unescaped comma ends the name
    (["qemu", "-name", "guest=a,,,debug-threads=on"], "a,", True),
    (["qemu", "-name", "guest=,,,,"], ",,", True),
    (["qemu", "-name", "guest=guest=x,debug-threads=on"], "guest=x", True),
    (["qemu", "-name", "guest=x,debug-threads=on"], "guest=x", False),
    (["qemu", "-name"], "instance-1", False),  # -name as the last word
    (["qemu", "instance-1"], "instance-1", False),
    (["qemu", "-S", "-name", "guest=b", "-name", "guest=a"], "a", True),
    ([], "a", False),
    (["python3", "-c", "-name guest=a"], "a", False),
])
def test_cmdline_names_guest(argv: list[str], name: str, expected: bool) -> None:
    assert cmdline_names_guest(argv, name) is expected


_NAME = st.text(min_size=1, max_size=30).filter(lambda s: "\x00" not in s)


@given(_NAME)
@example("a,b")
@example(",")
@example("a,,b,debug-threads=on")
def test_names_guest_of_libvirt_arg(name: str) -> None:
    argv = ["/usr/bin/qemu-system-x86_64", "-name", qemu_name_arg(name), "-S"]
    assert cmdline_names_guest(argv, name)
    # The kernel_trees helper writes the same syntax
    assert cmdline_names_guest(qemu_cmdline(name), name)


@given(_NAME, _NAME)
@example("a", "a,")
@example("a,b", "a")
@example("x", "guest=x")
def test_other_domain_never_matches(name: str, other: str) -> None:
    assume(name != other)
    argv = ["qemu", "-name", qemu_name_arg(other)]
    assert not cmdline_names_guest(argv, name)


@given(_NAME.filter(lambda s: not s.startswith("guest=")))
def test_plain_name_syntax(name: str) -> None:
    assert cmdline_names_guest(["qemu", "-name", name.replace(",", ",,")], name)
    assert cmdline_names_guest(["qemu", "-name", name.replace(",", ",,") + ",x=y"], name)


# ------------------------------------------------------------ check_domain_name
@pytest.mark.parametrize("name", [
    "instance-00000001", "a..b", "..a", "a..", "...", "x" * 250, "\u00e9" * 125, "a b",
    "quote'\"", "a,b", "$(rm -rf)", "\r", "\t", "-", ".hidden", "\udcff",
])
def test_check_domain_name_accepts(name: str) -> None:
    assert check_domain_name(name) == name


@pytest.mark.parametrize("name", [
    "", ".", "..", "/", "a/b", "../x", "../../etc/passwd", "/etc/passwd", "a\nb", "\n",
    "a\x00b", "\x00", "x" * 251, "\u00e9" * 126, "\U0001f600" * 63,
])
def test_check_domain_name_refuses(name: str) -> None:
    with pytest.raises(InstanceGone):
        check_domain_name(name)


@given(st.text(max_size=300))
@example("..")
@example("a/../..")
def test_checked_name_stays_in_pid_dir(name: str) -> None:
    try:
        check_domain_name(name)
    except InstanceGone:
        return
    path = os.path.join("/run/libvirt/qemu", name + ".pid")
    assert os.path.dirname(path) == "/run/libvirt/qemu"
    assert os.path.normpath(path).startswith("/run/libvirt/qemu/")
    assert len(os.fsencode(name + ".pid")) <= 255


@pytest.mark.parametrize("name", ["\ud800", "inst-\udbff"])
def test_check_domain_name_lone_surrogate(name: str) -> None:
    with pytest.raises(InstanceGone):
        check_domain_name(name)


@given(st.text(st.characters(exclude_categories=()), max_size=20))
@example("\ud800")
def test_check_domain_name_any_str(name: str) -> None:
    try:
        check_domain_name(name)
    except InstanceGone:
        pass


# ------------------------------------------------------- find_qemu_process: real
def test_real_stand_in_qemu(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pid_dir = str(tmp_path / "run")
    with StandInQemu("instance-00000001", pid_dir, extra_threads=2) as q:
        found = find_qemu_process(pid_dir, "/proc", "instance-00000001")
        assert found == QemuProcess(q.pid, q.tids)
        assert len(found.tids) == 3 and q.pid in found.tids
        assert list_tids("/proc", q.pid) == found.tids
    # stopped: its pidfile went with it
    with pytest.raises(InstanceGone, match="no pidfile"):
        find_qemu_process(pid_dir, "/proc", "instance-00000001")


@pytest.mark.parametrize("name", ["a,b", "inst ,, x", "with'quote", "\u00e9t\u00e9,", "..a"])
def test_real_stand_in_with_odd_name(tmp_path, name: str) -> None:  # type: ignore[no-untyped-def]
    pid_dir = str(tmp_path / "run")
    with StandInQemu(name, pid_dir) as q:
        assert find_qemu_process(pid_dir, "/proc", name).pid == q.pid


def test_real_pidfile_of_another_domain(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pid_dir = str(tmp_path / "run")
    with StandInQemu("instance-a", pid_dir) as a, StandInQemu("instance-b", pid_dir):
        with open(os.path.join(pid_dir, "instance-b.pid"), "w") as f:
            f.write(f"{a.pid}\n")  # b's pidfile names a's (live) process
        with pytest.raises(InstanceGone, match="pid reused"):
            find_qemu_process(pid_dir, "/proc", "instance-b")
        assert find_qemu_process(pid_dir, "/proc", "instance-a").pid == a.pid


def test_real_pidfile_of_a_non_qemu_process(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pid_dir = tmp_path / "run"
    pid_dir.mkdir()
    (pid_dir / "instance-a.pid").write_text(f"{os.getpid()}\n")
    with pytest.raises(InstanceGone, match="pid reused"):
        find_qemu_process(str(pid_dir), "/proc", "instance-a")


def test_real_pidfile_of_a_dead_process(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pid_dir = tmp_path / "run"
    pid_dir.mkdir()
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    (pid_dir / "instance-a.pid").write_text(f"{p.pid}\n")
    with pytest.raises(InstanceGone):  # gone, or reused by something else
        find_qemu_process(str(pid_dir), "/proc", "instance-a")


def test_refused_name_never_opens_a_path(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A name with '/' or '..' would reach a pidfile outside pid_dir: refused first."""
    pid_dir = tmp_path / "run"
    pid_dir.mkdir()
    with StandInQemu("victim", str(tmp_path)) as q:  # pidfile one level up
        assert os.path.exists(os.path.join(str(tmp_path), "victim.pid"))
        for name in ("../victim", "..", "x/../../victim"):
            with pytest.raises(InstanceGone, match="odd libvirt domain name"):
                find_qemu_process(str(pid_dir), "/proc", name)
        assert find_qemu_process(str(tmp_path), "/proc", "victim").pid == q.pid


# ------------------------------------------------------- find_qemu_process: fake
def _pidfile(pid_dir: str, name: str, content: bytes) -> None:
    os.makedirs(pid_dir, exist_ok=True)
    with open(os.path.join(pid_dir, name + ".pid"), "wb") as f:
        f.write(content)


def test_fake_proc_reused_pid(tmp_path) -> None:  # type: ignore[no-untyped-def]
    proc, run = str(tmp_path / "proc"), str(tmp_path / "run")
    build_proc(proc, 4242, qemu_cmdline("instance-b"), [4242, 4243])
    _pidfile(run, "instance-a", b"4242\n")
    with pytest.raises(InstanceGone, match="pid reused"):
        find_qemu_process(run, proc, "instance-a")
    # the pid is reused by a non-qemu program
    build_proc(proc, 4242, ["/bin/sleep", "100"], [4242])
    with pytest.raises(InstanceGone, match="pid reused"):
        find_qemu_process(run, proc, "instance-a")
    # zombie: empty cmdline
    build_proc(proc, 4242, [], [4242])
    with pytest.raises(InstanceGone, match="pid reused"):
        find_qemu_process(run, proc, "instance-a")
    # now the right process sits there
    build_proc(proc, 4242, qemu_cmdline("instance-a"), [4242, 4243, 4250])
    assert find_qemu_process(run, proc, "instance-a") == QemuProcess(4242, (4242, 4243, 4250))


def test_fake_proc_missing_pieces(tmp_path) -> None:  # type: ignore[no-untyped-def]
    proc, run = str(tmp_path / "proc"), str(tmp_path / "run")
    _pidfile(run, "instance-a", b"4242\n")
    with pytest.raises(InstanceGone, match="is gone"):
        find_qemu_process(run, proc, "instance-a")  # no /proc/4242
    os.makedirs(os.path.join(proc, "4242"))
    with open(os.path.join(proc, "4242", "cmdline"), "wb") as f:
        f.write(b"\x00".join(a.encode() for a in qemu_cmdline("instance-a")))
    with pytest.raises(InstanceGone, match="is gone"):
        find_qemu_process(run, proc, "instance-a")  # no task/ directory: exited meanwhile
    os.makedirs(os.path.join(proc, "4242", "task", "4242"))
    os.makedirs(os.path.join(proc, "4242", "task", "not-a-tid"))
    assert find_qemu_process(run, proc, "instance-a").tids == (4242,)


def test_pidfile_is_a_directory_or_unreadable(tmp_path) -> None:  # type: ignore[no-untyped-def]
    proc, run = str(tmp_path / "proc"), str(tmp_path / "run")
    os.makedirs(os.path.join(run, "instance-a.pid"))
    with pytest.raises(InstanceGone, match="cannot read pidfile"):
        find_qemu_process(run, proc, "instance-a")
    os.symlink("/etc/passwd", os.path.join(run, "instance-b.pid"))
    with pytest.raises(InstanceGone, match="bad pidfile"):
        find_qemu_process(run, proc, "instance-b")
    os.symlink(os.path.join(run, "loop.pid"), os.path.join(run, "loop.pid"))
    with pytest.raises(InstanceGone):
        find_qemu_process(run, proc, "loop")


@FIXTURE_OK
@given(st.binary(max_size=80))
@example(b"4242")
@example(b"4242\n\x00")
@example(b"\xff\xfe4242")
@example(b"42424242424242424242")
@example(b" " * 60 + b"4242\n")
def test_fake_proc_garbage_pidfile(tmp_path, content: bytes) -> None:  # type: ignore[no-untyped-def]
    proc, run = str(tmp_path / "proc"), str(tmp_path / "run")
    if not os.path.isdir(proc):
        build_proc(proc, 4242, qemu_cmdline("instance-a"), [4242, 4243])
    _pidfile(run, "instance-a", content)
    try:
        found = find_qemu_process(run, proc, "instance-a")
    except InstanceGone:
        try:
            assert parse_pidfile(content[:64].decode("ascii")) != 4242
        except (UnicodeDecodeError, ValueError):
            pass
        return
    assert found == QemuProcess(4242, (4242, 4243))
    assert content[:64].decode("ascii").strip().lstrip("0") == "4242"


@FIXTURE_OK
@given(st.binary(max_size=200))
@example(b"qemu\x00-name\x00guest=instance-a,debug-threads=on\x00")
@example(b"qemu\x00-name\x00guest=instance-a")
@example(b"\x00\x00-name\x00\x00")
def test_fake_proc_garbage_cmdline(tmp_path, raw: bytes) -> None:  # type: ignore[no-untyped-def]
    proc, run = str(tmp_path / "proc"), str(tmp_path / "run")
    os.makedirs(os.path.join(proc, "4242", "task", "4242"), exist_ok=True)
    with open(os.path.join(proc, "4242", "cmdline"), "wb") as f:
        f.write(raw)
    _pidfile(run, "instance-a", b"4242\n")
    expected = cmdline_names_guest(parse_cmdline(raw), "instance-a")
    try:
        find_qemu_process(run, proc, "instance-a")
    except InstanceGone:
        assert not expected
        return
    assert expected


def test_backend_survives_lone_surrogate_name(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from ceilometer_cmt.readings import InstanceRef
    from tests.conftest import make_host

    h = make_host(str(tmp_path))
    b = h.backend()
    uuid = "11111111-1111-4111-8111-111111111111"
    cycle = b.sync([InstanceRef(uuid, "inst-\ud800")])
    assert uuid in cycle.unmonitored
