"""The path to the kernel: libc through ctypes, ``perf_event_open`` and ``ioctl``.

libc is loaded once (``CDLL(None)``, the already-mapped C library) and the
raw ``perf_event_open`` syscall goes through it (libc has no wrapper). Every
call goes through one errno funnel, :func:`call`: ``EINTR`` is retried, any
other errno becomes one of the typed errors below in :func:`error_for`, each
also one of :mod:`ceilometer_cmt.errors` (backend unavailable, instance gone,
not monitored) so callers above need not know errnos.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from collections.abc import Callable

from ceilometer_cmt.backends.perf.abi import PERF_FLAG_FD_CLOEXEC, PerfEventAttr
from ceilometer_cmt.errors import BackendUnavailable, CmtError, InstanceGone, NotMonitored

#: ``__NR_perf_event_open`` per ``uname -m``. The asm-generic table (aarch64,
#: riscv64, loongarch64) uses 241.
SYSCALL_NUMBERS = {
    "x86_64": 298,
    "amd64": 298,
    "i386": 336,
    "i686": 336,
    "aarch64": 241,
    "arm64": 241,
    "riscv64": 241,
    "loongarch64": 241,
    "armv7l": 364,
    "armv6l": 364,
    "ppc64le": 319,
    "ppc64": 319,
    "s390x": 331,
    "mips64": 5296,  # n64 ABI
}

PARANOID_PATH = "/proc/sys/kernel/perf_event_paranoid"


# ---------------------------------------------------------------- errors

class PerfError(CmtError):
    """Base of the perf errors; ``errno`` holds the kernel's errno."""

    def __init__(self, message: str, err: int | None = None) -> None:
        super().__init__(message)
        self.errno = err


class PerfPermissionError(PerfError, BackendUnavailable):
    """EACCES/EPERM: the kernel refused this process."""


class PerfUnsupported(PerfError, BackendUnavailable):
    """ENOENT/EINVAL/ENODEV/EOPNOTSUPP/E2BIG: no such PMU or event here."""


class PerfProcessGone(PerfError, InstanceGone):
    """ESRCH: the thread to count exited."""


class PerfTooManyFiles(PerfError, NotMonitored):
    """EMFILE/ENFILE: the fd limit is reached."""


_UNSUPPORTED = {errno.ENOENT, errno.EINVAL, errno.ENODEV, errno.EOPNOTSUPP, errno.E2BIG,
                errno.ENOSYS}


def error_for(err: int, what: str) -> PerfError:
    """The one place an errno becomes a typed error (returned, for ``raise``)."""
    text = os.strerror(err)
    name = errno.errorcode.get(err, str(err))
    if err in (errno.EACCES, errno.EPERM):
        return PerfPermissionError(
            f"{what}: {name} ({text}): the kernel refused perf_event_open. "
            f"Lower {PARANOID_PATH} (<= 1 lets counting events that include "
            "kernel time; intel_cqm accepts no exclude_* bit) or run the agent "
            "with CAP_PERFMON (Linux >= 5.8) / CAP_SYS_ADMIN; counting another "
            "user's qemu also needs ptrace access to it (root or CAP_SYS_PTRACE)",
            err)
    if err in _UNSUPPORTED:
        return PerfUnsupported(f"{what}: {name} ({text}): this kernel has no such PMU "
                               "or does not support the event", err)
    if err == errno.ESRCH:
        return PerfProcessGone(f"{what}: {name}: the thread exited", err)
    if err in (errno.EMFILE, errno.ENFILE):
        return PerfTooManyFiles(f"{what}: {name} ({text}): out of file descriptors "
                                "(raise the agent's RLIMIT_NOFILE)", err)
    return PerfError(f"{what}: {name} ({text})", err)


# ---------------------------------------------------------------- libc

class _Libc:
    """libc, loaded once, and the syscall number of this machine."""

    def __init__(self) -> None:
        self.lib = ctypes.CDLL(None, use_errno=True)
        self.syscall = self.lib.syscall
        self.syscall.restype = ctypes.c_long
        self.ioctl = self.lib.ioctl
        self.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong]
        self.ioctl.restype = ctypes.c_int
        self.nr_perf_event_open = SYSCALL_NUMBERS.get(platform.machine().lower())


_LIBC: _Libc | None = None


def libc() -> _Libc:
    """The process-wide libc handle."""
    global _LIBC
    if _LIBC is None:
        _LIBC = _Libc()
    return _LIBC


def syscall_number(machine: str | None = None) -> int:
    """``__NR_perf_event_open`` for ``machine`` (default: this one)."""
    m = (machine or platform.machine()).lower()
    try:
        return SYSCALL_NUMBERS[m]
    except KeyError:
        raise PerfUnsupported(f"perf_event_open: unknown syscall number on {m!r}",
                              errno.ENOSYS) from None


# ---------------------------------------------------------------- calls

def call(fn: Callable[..., int], *args: object, what: Callable[[], str]) -> int:
    """The errno funnel: ``fn(*args)`` (a ctypes function of the ``use_errno``
    libc) again while it fails with ``EINTR``; any other failure (-1) becomes
    the typed error of :func:`error_for`, named by ``what()``."""
    while True:
        result = fn(*args)
        if result >= 0:
            return int(result)
        err = ctypes.get_errno()
        if err != errno.EINTR:
            raise error_for(err, what())


def perf_event_open(attr: PerfEventAttr, pid: int, cpu: int = -1, group_fd: int = -1,
                    flags: int = PERF_FLAG_FD_CLOEXEC) -> int:
    """The raw syscall through the errno funnel; returns the new fd."""
    lib = libc()
    nr = lib.nr_perf_event_open
    if nr is None:
        nr = syscall_number()
    return call(lib.syscall, ctypes.c_long(nr), ctypes.byref(attr), ctypes.c_int(pid),
                ctypes.c_int(cpu), ctypes.c_int(group_fd), ctypes.c_ulong(flags),
                what=lambda: f"perf_event_open(type={attr.type}, "
                             f"config={attr.config:#x}, pid={pid})")


def ioctl(fd: int, request: int, arg: int = 0) -> None:
    """``ioctl(fd, request, arg)`` through the errno funnel."""
    call(libc().ioctl, fd, request, arg, what=lambda: f"ioctl({fd}, {request:#x})")
