"""Names opened beneath a directory fd, for a root process that must not be led astray.

The privsep daemon resolves every name the agent sends beneath one
directory fd it opened itself, so that no symlink, ``..``, absolute path,
``/proc/<pid>/root`` magic link or mount placed by someone else can take a
root write anywhere else:

- ``openat2(2)`` (Linux >= 5.6) with ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
  RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV`` (``include/uapi/linux/openat2.h``);
- where the kernel lacks it (``ENOSYS``), a walk of one component at a time,
  each opened ``O_NOFOLLOW`` relative to the one before, and refused when it
  sits on another device than the directory it started from.

Names are checked before either: relative, made of plain components (no
empty one, no ``.`` or ``..``, no NUL).

Also here: the filesystem magic of an fd (``fstatfs``) and the mount an fd
sits on (``/proc/self/fdinfo`` ``mnt_id`` and ``/proc/self/mountinfo``).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import stat
from dataclasses import dataclass

#: ``__NR_openat2``: one number on every architecture (the shared syscall table)
SYS_OPENAT2 = 437
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
STRICT = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV

#: ``include/uapi/linux/magic.h``
RDTGROUP_SUPER_MAGIC = 0x7655821
FUSE_SUPER_MAGIC = 0x65735546

#: errnos meaning "the name led somewhere it may not": a symlink (ELOOP, and
#: ENOTDIR for a symlink where a directory was asked with O_PATH|O_NOFOLLOW),
#: an escape (EXDEV, from RESOLVE_BENEATH or RESOLVE_NO_XDEV)
ESCAPES = (errno.ELOOP, errno.EXDEV)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def check_relative(path: str) -> list[str]:
    """The components of ``path``; ValueError unless every one is a plain name."""
    parts = path.split("/")
    if "\x00" in path or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"not a plain relative path: {path!r}")
    return parts


def openat2(dirfd: int, path: str, flags: int, resolve: int = STRICT) -> int:
    """The raw ``openat2`` syscall (EINTR retried); OSError as the kernel says."""
    syscall = _libc().syscall
    syscall.restype = ctypes.c_long
    how = _OpenHow(flags | os.O_CLOEXEC, 0, resolve)
    raw = os.fsencode(path)
    while True:
        fd = syscall(ctypes.c_long(SYS_OPENAT2), ctypes.c_int(dirfd), ctypes.c_char_p(raw),
                     ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err != errno.EINTR:
            raise OSError(err, os.strerror(err), path)


@functools.lru_cache(maxsize=1)
def have_openat2() -> bool:
    """Does this kernel have openat2 (Linux >= 5.6, and no seccomp filter hiding it)?"""
    root = os.open("/", os.O_PATH | os.O_CLOEXEC)
    try:
        os.close(openat2(root, ".", os.O_PATH, 0))
    except OSError as e:
        return e.errno != errno.ENOSYS
    finally:
        os.close(root)
    return True


def _walk(dirfd: int, parts: list[str], flags: int) -> int:
    """openat2's promise without it: one ``O_NOFOLLOW`` component at a time,
    never onto another device."""
    dev = os.fstat(dirfd).st_dev
    held: list[int] = []
    cur = dirfd
    try:
        for name in parts[:-1]:
            try:
                cur = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                              dir_fd=cur)
            except NotADirectoryError as e:  # a symlink, opened as itself
                raise OSError(errno.ELOOP, "a symlink or not a directory", name) from e
            held.append(cur)
            if os.fstat(cur).st_dev != dev:
                raise OSError(errno.EXDEV, "crosses a mount point", name)
        fd = os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=cur)
        if os.fstat(fd).st_dev != dev:
            os.close(fd)
            raise OSError(errno.EXDEV, "crosses a mount point", parts[-1])
        return fd
    finally:
        for fd in held:
            os.close(fd)


def open_beneath(dirfd: int, path: str, flags: int, *, use_openat2: bool | None = None) -> int:
    """An fd on ``path`` resolved strictly beneath ``dirfd``: no symlink (not
    even the last component), no magic link, no ``..``, no other mount.
    ``use_openat2`` None: openat2 where the kernel has it, else the walk."""
    parts = check_relative(path)
    if use_openat2 is None:
        use_openat2 = have_openat2()
    fd = openat2(dirfd, path, flags | os.O_NOFOLLOW) if use_openat2 else \
        _walk(dirfd, parts, flags)
    # O_PATH|O_NOFOLLOW opens a final symlink as itself, even under openat2
    if flags & os.O_PATH and stat.S_ISLNK(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.ELOOP, "a symlink", path)
    return fd


def fs_magic(fd: int) -> int:
    """``f_type`` of ``fstatfs(fd)`` (works on O_PATH fds)."""
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit
    fstatfs = _libc().fstatfs
    fstatfs.argtypes = [ctypes.c_int, ctypes.c_void_p]
    if fstatfs(fd, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    # f_type is the first field, a C long (__fsword_t) on every 64-bit Linux ABI
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


@dataclass(frozen=True)
class MountInfo:
    """One line of /proc/self/mountinfo: the mount an fd sits on."""

    mount_id: int
    mount_point: str
    fstype: str
    source: str
    super_options: tuple[str, ...]


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_of(fd: int) -> MountInfo:
    """The mount ``fd`` sits on, by its mount id (not by a path someone may
    have mounted over). OSError when /proc does not say."""
    with open(f"/proc/self/fdinfo/{fd}", encoding="ascii", errors="replace") as f:
        ids = [line.split()[1] for line in f if line.startswith("mnt_id:")]
    if not ids:
        raise OSError(errno.ENOENT, f"no mnt_id in /proc/self/fdinfo/{fd}")
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape",
              newline="\n") as f:
        for line in f:
            left, sep, right = line.rstrip("\n").partition(" - ")
            fields = left.split(" ")
            if sep and len(fields) >= 5 and fields[0] == ids[0]:
                rfields = right.split(" ")
                if len(rfields) >= 3:
                    return MountInfo(int(fields[0]), _unescape(fields[4]), rfields[0],
                                 _unescape(rfields[1]), tuple(rfields[2].split(",")))
    raise OSError(errno.ENOENT, f"mount {ids[0]} is not in /proc/self/mountinfo")
