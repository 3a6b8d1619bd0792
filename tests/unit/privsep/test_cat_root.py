"""Who holds the resctrl root's flock (``/proc/locks``), and whether that is
the daemon's own client (its ancestry), read from a fixture /proc; the
lock taken for real on a directory. The requests themselves run on the FUSE
simulator in tests/functional/privsep/test_cat_root.py."""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ceilometer_cmt.privsep import cat_root


def _proc(tmp_path: Path, fd: int, locks: list[tuple[str, int]]) -> str:
    st = os.fstat(fd)
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    proc = tmp_path / "proc"
    proc.mkdir()
    lines = [f"{i + 1}: {kind} ADVISORY  WRITE {pid} {key} 0 EOF\n"
             for i, (kind, pid) in enumerate(locks)]
    lines.append(f"9: -> FLOCK  ADVISORY  WRITE 4242 {key} 0 EOF\n")  # a waiter
    lines.append("10: FLOCK  ADVISORY  WRITE 777 00:01:1 0 EOF\n")  # another inode
    (proc / "locks").write_text("".join(lines))
    return str(proc)


def test_holders_of_the_roots_flock(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        proc = _proc(tmp_path, fd, [("FLOCK", 1234), ("POSIX", 99)])
        assert cat_root.flock_holders(fd, proc) == {1234}
    finally:
        os.close(fd)


def test_ancestors_walk_the_parents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc = tmp_path / "proc"
    for pid, ppid in [(300, 200), (200, 1)]:
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "stat").write_text(f"{pid} (sudo) S {ppid} 1 1 0\n")
    monkeypatch.setattr(os, "getppid", lambda: 300)
    assert cat_root.ancestors(str(proc)) == {300, 200}
    assert cat_root.ancestors() >= {os.getppid()}  # the real /proc too


def test_the_lock_of_a_stranger_is_waited_for_then_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cat_root, "LOCK_WAIT", 0.2)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, time\n"
         f"fd = os.open({str(tmp_path)!r}, os.O_RDONLY)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(OSError) as e:
            cat_root._flock(fd, "/proc")
        assert e.value.errno == errno.EWOULDBLOCK and str(holder.pid) in str(e.value)
    finally:
        holder.kill()
        holder.wait()
    try:
        assert cat_root._flock(fd, "/proc") is True  # taken once free
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def test_the_clients_own_lock_is_used(tmp_path: Path) -> None:
    """This process holds it (as a client holds it around its cycle): the
    daemon's request goes on under it, and takes nothing."""
    mine = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(mine, fcntl.LOCK_EX)
        assert cat_root._flock(fd, "/proc") is False
    finally:
        os.close(fd)
        os.close(mine)


def test_the_lock_of_the_daemons_client_is_used(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The helper's daemon is orphaned: its client is known by the socket's
    peer pid (set_client), not by ancestry."""
    monkeypatch.setattr(cat_root, "_clients", set())
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, time\n"
         f"fd = os.open({str(tmp_path)!r}, os.O_RDONLY)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        cat_root.set_client(holder.pid)
        assert cat_root._flock(fd, "/proc") is False
    finally:
        holder.kill()
        holder.wait()
        os.close(fd)
