"""pidfds of real child processes, and the start time that names a process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from ceilometer_cmt.linux import process_watch
from ceilometer_cmt.linux.process_watch import PidfdWatch, start_time
from ceilometer_cmt.testing.childproc import die_with_parent

needs_pidfd = pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="no pidfd_open")


def _child() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                            preexec_fn=die_with_parent)


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        p.kill()
        p.wait()


def _pidfds() -> set[int]:
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[pidfd]":
                out.add(int(fd))
        except FileNotFoundError:
            pass  # the fd of the listing itself
    return out


def _field_22(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
    return int(raw[raw.rfind(b")") + 2:].split()[19])


def test_start_time_of_a_live_child_and_of_a_reaped_one(children) -> None:  # type: ignore[no-untyped-def]
    p = _child()
    children.append(p)
    assert start_time("/proc", p.pid) == _field_22(p.pid)
    assert start_time("/proc", os.getpid()) == _field_22(os.getpid())
    p.kill()
    p.wait()
    assert start_time("/proc", p.pid) is None


def test_start_time_reads_the_stat_file_under_a_fixture_root(tmp_path
                                                            ):  # type: ignore[no-untyped-def]
    fields = ["S"] + [str(n) for n in range(4, 22)] + ["987654"] + ["0"] * 30
    os.makedirs(tmp_path / "4242")
    (tmp_path / "4242" / "stat").write_text("4242 (qemu (x) y) " + " ".join(fields) + "\n")
    assert start_time(str(tmp_path), 4242) == 987654
    assert start_time(str(tmp_path), 4243) is None


@needs_pidfd
def test_an_exit_is_told_by_its_pidfd_only(children) -> None:  # type: ignore[no-untyped-def]
    a, b = _child(), _child()
    children += [a, b]
    watch = PidfdWatch("/proc")
    assert watch.enabled
    before = _pidfds()
    fa, fb = watch.watch(a.pid), watch.watch(b.pid)
    assert fa is not None and fb is not None
    assert _pidfds() - before == {fa, fb}
    assert watch.exited() == set()
    a.send_signal(signal.SIGKILL)
    a.wait()
    assert watch.exited() == {fa}  # a's pidfd, not b's
    assert watch.exited() == {fa}  # told again until unwatched
    watch.unwatch(fa)
    assert watch.exited() == set()
    assert _pidfds() - before == {fb}
    watch.close()
    assert _pidfds() - before == set()
    assert watch.exited() == set()


@needs_pidfd
def test_a_zombie_counts_as_exited(children) -> None:  # type: ignore[no-untyped-def]
    p = _child()
    children.append(p)
    watch = PidfdWatch("/proc")
    fd = watch.watch(p.pid)
    assert fd is not None
    p.send_signal(signal.SIGKILL)
    os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
    assert watch.exited() == {fd}
    watch.close()


@needs_pidfd
def test_a_gone_pid_gives_no_pidfd(children) -> None:  # type: ignore[no-untyped-def]
    p = _child()
    children.append(p)
    p.kill()
    p.wait()
    watch = PidfdWatch("/proc")
    before = _pidfds()
    assert watch.watch(p.pid) is None
    assert _pidfds() == before and watch.exited() == set()


@needs_pidfd
def test_a_process_that_changed_while_opened_gives_no_pidfd(children, monkeypatch
                                                            ):  # type: ignore[no-untyped-def]
    """The start time read before and after pidfd_open differs (the pid was
    reused in between, or the process vanished): the pidfd may name another
    process, it is closed and None says so."""
    p = _child()
    children.append(p)
    watch = PidfdWatch("/proc")
    before = _pidfds()
    times = iter([100, 200])
    monkeypatch.setattr(process_watch, "start_time", lambda root, pid: next(times))
    assert watch.watch(p.pid) is None
    monkeypatch.setattr(process_watch, "start_time", lambda root, pid: None)
    assert watch.watch(p.pid) is None
    assert _pidfds() == before and watch.exited() == set()


def test_no_pidfds_on_a_fixture_proc_tree(tmp_path, children):  # type: ignore[no-untyped-def]
    p = _child()
    children.append(p)
    watch = PidfdWatch(str(tmp_path))
    before = _pidfds()
    assert not watch.enabled
    assert watch.watch(p.pid) is None  # the caller falls back to the start time
    assert _pidfds() == before


@needs_pidfd
def test_unwatch_closes_only_its_own_pidfds(children) -> None:  # type: ignore[no-untyped-def]
    p = _child()
    children.append(p)
    watch = PidfdWatch("/proc")
    fd = watch.watch(p.pid)
    assert fd is not None
    other = os.open("/dev/null", os.O_RDONLY)
    try:
        watch.unwatch(other)  # not a watched fd: left open
        watch.unwatch(None)
        os.fstat(other)
        watch.unwatch(fd)
        watch.unwatch(fd)  # twice: no error, nothing else closed
        os.fstat(other)
        assert fd not in _pidfds()
    finally:
        os.close(other)
