"""Names opened beneath a directory fd: openat2 and the O_NOFOLLOW walk alike."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ceilometer_cmt.linux import beneath

MODES = [pytest.param(True, id="openat2"), pytest.param(False, id="walk")]


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[tuple[Path, int, Path]]:
    """root/{mon_groups/g/tasks, link -> outside, mon_groups/evil -> outside,
    tasklink -> outside/victim}; outside/victim."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "mon_groups" / "g").mkdir(parents=True)
    (root / "mon_groups" / "g" / "tasks").write_text("")
    outside.mkdir()
    (outside / "victim").write_text("keep\n")
    (outside / "mon_groups").mkdir()
    (root / "link").symlink_to(outside)
    (root / "mon_groups" / "evil").symlink_to(outside)
    (root / "tasklink").symlink_to(outside / "victim")
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        yield root, fd, outside
    finally:
        os.close(fd)


@pytest.mark.parametrize("use_openat2", MODES)
def test_plain_names_open(tree: tuple[Path, int, Path], use_openat2: bool) -> None:
    if use_openat2 and not beneath.have_openat2():
        pytest.skip("this kernel has no openat2 (Linux < 5.6)")
    root, fd, _ = tree
    t = beneath.open_beneath(fd, "mon_groups/g/tasks", os.O_WRONLY, use_openat2=use_openat2)
    try:
        os.write(t, b"42\n")
    finally:
        os.close(t)
    assert (root / "mon_groups" / "g" / "tasks").read_text() == "42\n"
    d = beneath.open_beneath(fd, "mon_groups", os.O_RDONLY | os.O_DIRECTORY,
                             use_openat2=use_openat2)
    try:
        assert sorted(os.listdir(d)) == ["evil", "g"]
        os.mkdir("new", dir_fd=d)
        os.rmdir("new", dir_fd=d)
    finally:
        os.close(d)


@pytest.mark.parametrize("use_openat2", MODES)
@pytest.mark.parametrize("path", ["link/victim", "tasklink", "mon_groups/evil",
                                  "mon_groups/evil/x", "link"])
def test_symlinks_are_refused_anywhere(tree: tuple[Path, int, Path], use_openat2: bool,
                                       path: str) -> None:
    if use_openat2 and not beneath.have_openat2():
        pytest.skip("this kernel has no openat2 (Linux < 5.6)")
    _, fd, outside = tree
    for flags in (os.O_WRONLY, os.O_RDONLY | os.O_DIRECTORY, os.O_PATH):
        with pytest.raises(OSError) as e:
            os.close(beneath.open_beneath(fd, path, flags, use_openat2=use_openat2))
        assert e.value.errno in (errno.ELOOP, errno.ENOTDIR), (path, flags, e.value)
    assert (outside / "victim").read_text() == "keep\n"


@pytest.mark.parametrize("path", ["", "/etc/passwd", "../outside/victim", "mon_groups/../..",
                                  "./mon_groups", "mon_groups//g", "mon_groups/g/",
                                  "mon_groups\x00/g", "/proc/self/root/etc"])
def test_non_plain_names_never_reach_the_kernel(tree: tuple[Path, int, Path],
                                                path: str) -> None:
    _, fd, _ = tree
    with pytest.raises(ValueError, match="not a plain relative path"):
        beneath.open_beneath(fd, path, os.O_RDONLY)


def test_openat2_itself_refuses_escapes(tree: tuple[Path, int, Path]) -> None:
    """The kernel's side, without our name check: RESOLVE_BENEATH and
    RESOLVE_NO_MAGICLINKS stop what a name check might miss."""
    if not beneath.have_openat2():
        pytest.skip("this kernel has no openat2 (Linux < 5.6)")
    _, fd, _ = tree
    for path, err in (("../outside/victim", errno.EXDEV), ("/etc/passwd", errno.EXDEV),
                      ("link/victim", errno.ELOOP)):
        with pytest.raises(OSError) as e:
            beneath.openat2(fd, path, os.O_RDONLY)
        assert e.value.errno == err, path
    proc = os.open("/proc", os.O_PATH | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError) as e:
            beneath.openat2(proc, "self/root/etc/passwd", os.O_RDONLY,
                            beneath.RESOLVE_BENEATH | beneath.RESOLVE_NO_MAGICLINKS)
        assert e.value.errno in (errno.ELOOP, errno.EXDEV)
    finally:
        os.close(proc)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
@pytest.mark.parametrize("use_openat2", MODES)
def test_a_mount_below_the_root_is_not_crossed(tree: tuple[Path, int, Path],
                                               use_openat2: bool) -> None:
    if use_openat2 and not beneath.have_openat2():
        pytest.skip("this kernel has no openat2 (Linux < 5.6)")
    root, fd, _ = tree
    over = root / "mon_groups" / "g"
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "cmt-test", str(over)],
                   check=True)
    try:
        (over / "tasks").write_text("")
        with pytest.raises(OSError) as e:
            os.close(beneath.open_beneath(fd, "mon_groups/g/tasks", os.O_WRONLY,
                                          use_openat2=use_openat2))
        assert e.value.errno == errno.EXDEV
        g = os.open(over, os.O_PATH | os.O_DIRECTORY)
        try:
            assert beneath.fs_magic(g) == 0x01021994  # TMPFS_MAGIC
            m = beneath.mount_of(g)
            assert (m.mount_point, m.fstype, m.source) == (str(over), "tmpfs", "cmt-test")
        finally:
            os.close(g)
    finally:
        subprocess.run(["umount", str(over)], check=True)


def test_mount_of_follows_the_fd_not_the_path(tmp_path: Path) -> None:
    fd = os.open("/proc", os.O_PATH | os.O_DIRECTORY)
    try:
        assert beneath.fs_magic(fd) == 0x9FA0  # PROC_SUPER_MAGIC
        m = beneath.mount_of(fd)
        assert m.fstype == "proc"
    finally:
        os.close(fd)
    with pytest.raises(OSError):
        beneath.mount_of(9999)
