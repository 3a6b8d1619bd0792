"""A small ctypes layer over ``perf_event_open(2)`` for counting events.

Only what a counting (never sampling) monitor needs: ``struct
perf_event_attr`` with its ``size`` versioning, the raw syscall (libc has no
wrapper), ``ioctl`` ENABLE/DISABLE/RESET and ``read`` with
``PERF_FORMAT_TOTAL_TIME_ENABLED | PERF_FORMAT_TOTAL_TIME_RUNNING``.

* libc is loaded once (``CDLL(None)``, the already-mapped C library).
* Every libc call goes through one errno funnel, :func:`_call`: ``EINTR``
  is retried, any other errno becomes a typed error of
  :mod:`ceilometer_cmt.errors` in :func:`_raise_for`.
* A :class:`Counter` owns its fd: ``close()`` is idempotent, it is a context
  manager, and fds are opened ``PERF_FLAG_FD_CLOEXEC`` so processes the agent
  spawns never inherit them.

``struct perf_event_attr`` (``include/uapi/linux/perf_event.h``) grew over
time; the kernel learns which layout the caller speaks from ``attr.size``
(``PERF_ATTR_SIZE_VER0`` = 64 bytes up to ``config1``, ``VER1`` = 72 adds
``config2``, ...). It zero-extends a smaller struct and rejects a larger one
with non-zero unknown tail bytes (``E2BIG``). :func:`attr_size_for` picks the
smallest version that holds the fields in use, which is what kernels 4.1-4.13
(the ones with ``intel_cqm``) accept.

Read values: a counter that was never scheduled in (``time_running == 0``,
e.g. a thread that has not run since the open) or that was multiplexed
(``time_running < time_enabled``) is reported as ``None``, never as 0 and
never scaled: the ``intel_cqm`` PMU is a software-context PMU that is never
multiplexed, and its occupancy is a snapshot gauge that must not be
extrapolated anyway.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import repeat
from types import TracebackType

from ceilometer_cmt.errors import BackendUnavailable, CmtError, InstanceGone, NotMonitored

# ---------------------------------------------------------------- constants

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

PERF_TYPE_HARDWARE = 0
PERF_TYPE_SOFTWARE = 1
PERF_COUNT_SW_CPU_CLOCK = 0
PERF_COUNT_SW_TASK_CLOCK = 1
PERF_COUNT_SW_PAGE_FAULTS = 2
PERF_COUNT_SW_CONTEXT_SWITCHES = 3

PERF_FORMAT_TOTAL_TIME_ENABLED = 1 << 0
PERF_FORMAT_TOTAL_TIME_RUNNING = 1 << 1

# bits of the big bitfield word of perf_event_attr
ATTR_DISABLED = 1 << 0
ATTR_INHERIT = 1 << 1
ATTR_PINNED = 1 << 2
ATTR_EXCLUSIVE = 1 << 3
ATTR_EXCLUDE_USER = 1 << 4
ATTR_EXCLUDE_KERNEL = 1 << 5
ATTR_EXCLUDE_HV = 1 << 6
ATTR_EXCLUDE_IDLE = 1 << 7

PERF_FLAG_FD_NO_GROUP = 1 << 0
PERF_FLAG_FD_OUTPUT = 1 << 1
PERF_FLAG_PID_CGROUP = 1 << 2
PERF_FLAG_FD_CLOEXEC = 1 << 3

# _IO('$', n): no direction, no size -> ('$' << 8) | n
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_DISABLE = 0x2401
PERF_EVENT_IOC_RESET = 0x2403

PERF_ATTR_SIZE_VER0 = 64  # up to config1
PERF_ATTR_SIZE_VER1 = 72  # + config2
PERF_ATTR_SIZE_VER2 = 80  # + branch_sample_type
PERF_ATTR_SIZE_VER3 = 96  # + sample_regs_user, sample_stack_user, clockid
PERF_ATTR_SIZE_VER4 = 104  # + sample_regs_intr
PERF_ATTR_SIZE_VER5 = 112  # + aux_watermark, sample_max_stack
PERF_ATTR_SIZE_VER6 = 120  # + aux_sample_size
PERF_ATTR_SIZE_VER7 = 128  # + sig_data
ATTR_SIZES = (PERF_ATTR_SIZE_VER0, PERF_ATTR_SIZE_VER1, PERF_ATTR_SIZE_VER2,
              PERF_ATTR_SIZE_VER3, PERF_ATTR_SIZE_VER4, PERF_ATTR_SIZE_VER5,
              PERF_ATTR_SIZE_VER6, PERF_ATTR_SIZE_VER7)

PARANOID_PATH = "/proc/sys/kernel/perf_event_paranoid"


class PerfEventAttr(ctypes.Structure):
    """``struct perf_event_attr`` up to ``PERF_ATTR_SIZE_VER7``.

    The 64-bit bitfield word is one plain ``flags`` field (``ATTR_*`` bits):
    ctypes bitfield layout is compiler-defined, an explicit mask is not.
    """

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
        ("config", ctypes.c_uint64),
        ("sample_period", ctypes.c_uint64),
        ("sample_type", ctypes.c_uint64),
        ("read_format", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("wakeup_events", ctypes.c_uint32),
        ("bp_type", ctypes.c_uint32),
        ("config1", ctypes.c_uint64),  # VER0 ends here (64)
        ("config2", ctypes.c_uint64),  # VER1 (72)
        ("branch_sample_type", ctypes.c_uint64),  # VER2 (80)
        ("sample_regs_user", ctypes.c_uint64),
        ("sample_stack_user", ctypes.c_uint32),
        ("clockid", ctypes.c_int32),  # VER3 (96)
        ("sample_regs_intr", ctypes.c_uint64),  # VER4 (104)
        ("aux_watermark", ctypes.c_uint32),
        ("sample_max_stack", ctypes.c_uint16),
        ("reserved_2", ctypes.c_uint16),  # VER5 (112)
        ("aux_sample_size", ctypes.c_uint32),
        ("reserved_3", ctypes.c_uint32),  # VER6 (120)
        ("sig_data", ctypes.c_uint64),  # VER7 (128)
    ]


assert ctypes.sizeof(PerfEventAttr) == PERF_ATTR_SIZE_VER7


# ---------------------------------------------------------------- errors

class PerfError(CmtError):
    """Base of the errors of this module; ``errno`` holds the kernel's errno."""

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


def _raise_for(err: int, what: str) -> PerfError:
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


# ---------------------------------------------------------------- attr

@dataclass(frozen=True)
class EventSpec:
    """What to count: a PMU type and its config words, plus attr bits."""

    type: int
    config: int
    config1: int = 0
    config2: int = 0
    flags: int = ATTR_DISABLED | ATTR_INHERIT
    read_format: int = PERF_FORMAT_TOTAL_TIME_ENABLED | PERF_FORMAT_TOTAL_TIME_RUNNING


def attr_size_for(spec: EventSpec) -> int:
    """Smallest ``PERF_ATTR_SIZE_VER*`` that carries every field ``spec`` sets."""
    return PERF_ATTR_SIZE_VER1 if spec.config2 else PERF_ATTR_SIZE_VER0


def make_attr(spec: EventSpec, size: int | None = None) -> PerfEventAttr:
    if size is None:
        size = attr_size_for(spec)
    if size not in ATTR_SIZES:
        raise ValueError(f"not a perf_event_attr size: {size}")
    if spec.config2 and size < PERF_ATTR_SIZE_VER1:
        raise ValueError("config2 needs PERF_ATTR_SIZE_VER1 or larger")
    attr = PerfEventAttr()
    attr.type = spec.type
    attr.size = size
    attr.config = spec.config
    attr.config1 = spec.config1
    attr.config2 = spec.config2
    attr.read_format = spec.read_format
    attr.flags = spec.flags
    return attr


# ---------------------------------------------------------------- syscalls

def _call(fn: Callable[..., int], *args: object, what: Callable[[], str]) -> int:
    """The errno funnel: ``fn(*args)`` (a ctypes function of the ``use_errno``
    libc) again while it fails with ``EINTR``; any other failure (-1) becomes
    the typed error of :func:`_raise_for`, named by ``what()``."""
    while True:
        result = fn(*args)
        if result >= 0:
            return int(result)
        err = ctypes.get_errno()
        if err != errno.EINTR:
            raise _raise_for(err, what())


def perf_event_open(attr: PerfEventAttr, pid: int, cpu: int = -1, group_fd: int = -1,
                    flags: int = PERF_FLAG_FD_CLOEXEC) -> int:
    """The raw syscall through the errno funnel; returns the new fd."""
    lib = libc()
    nr = lib.nr_perf_event_open
    if nr is None:
        nr = syscall_number()
    return _call(lib.syscall, ctypes.c_long(nr), ctypes.byref(attr), ctypes.c_int(pid),
                 ctypes.c_int(cpu), ctypes.c_int(group_fd), ctypes.c_ulong(flags),
                 what=lambda: f"perf_event_open(type={attr.type}, "
                              f"config={attr.config:#x}, pid={pid})")


def _ioctl(fd: int, request: int, arg: int = 0) -> None:
    _call(libc().ioctl, fd, request, arg, what=lambda: f"ioctl({fd}, {request:#x})")


#: one ``read()`` of a counter with our read_format: value, time enabled, time running
READ_SIZE = 24
READ_FORMAT = struct.Struct("=QQQ")


@dataclass(frozen=True)
class Reading:
    """One ``read()``: the raw count and the two times (ns)."""

    value: int
    time_enabled: int
    time_running: int

    @property
    def usable(self) -> int | None:
        """The count, or None when never scheduled in or multiplexed."""
        if self.time_running == 0 or self.time_running < self.time_enabled:
            return None
        return self.value


class Counter:
    """One perf event fd: open, enable, read, close."""

    __slots__ = ("fd", "spec", "pid")

    def __init__(self, spec: EventSpec, pid: int, cpu: int = -1,
                 attr_size: int | None = None, enable: bool = True) -> None:
        self.spec = spec
        self.pid = pid
        self.fd = -1
        attr = make_attr(spec, attr_size)
        self.fd = perf_event_open(attr, pid, cpu)
        if enable and spec.flags & ATTR_DISABLED:
            try:
                self.enable()
            except BaseException:
                self.close()
                raise

    # ioctls
    def enable(self) -> None:
        _ioctl(self._live(), PERF_EVENT_IOC_ENABLE)

    def disable(self) -> None:
        _ioctl(self._live(), PERF_EVENT_IOC_DISABLE)

    def reset(self) -> None:
        _ioctl(self._live(), PERF_EVENT_IOC_RESET)

    # reads
    def read_raw(self) -> Reading:
        try:
            raw = os.read(self._live(), READ_SIZE)
        except OSError as e:  # os.read retries EINTR itself (PEP 475)
            raise _raise_for(e.errno or errno.EIO, f"read(perf fd {self.fd})") from e
        if len(raw) != READ_SIZE:
            return Reading(0, 0, 0)
        value, enabled, running = READ_FORMAT.unpack(raw)
        return Reading(value, enabled, running)

    def read(self) -> int | None:
        return self.read_raw().usable

    # lifetime
    def _live(self) -> int:
        if self.fd < 0:
            raise PerfError("perf counter is closed", errno.EBADF)
        return self.fd

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            close_fd(fd)

    def __enter__(self) -> Counter:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:  # last resort; owners call close()
        try:
            self.close()
        except OSError:
            pass

    def __repr__(self) -> str:
        return (f"Counter(fd={self.fd}, pid={self.pid}, type={self.spec.type}, "
                f"config={self.spec.config:#x})")


# ---------------------------------------------------------------- fds in bulk
# What a holder of many counters (the perf backend in this process, or the
# privsep daemon's registry for it) does with them: plain fds it owns.

#: what an empty read (event in error state) becomes in a batch: never ran
NO_DATA = bytes(READ_SIZE)


def close_fd(fd: int) -> None:
    """``close(2)``; a failure is ignored: on EINTR/EIO Linux has released the fd anyway."""
    try:
        os.close(fd)
    except OSError:
        pass


def open_counters(specs: Sequence[EventSpec], tid: int) -> list[int]:
    """One enabled counter per spec on thread ``tid``, all or none: their fds,
    which the caller owns from now on (close them with :func:`close_fd`)."""
    opened: list[Counter] = []
    try:
        for spec in specs:
            opened.append(Counter(spec, tid))
    except BaseException:
        for c in opened:
            c.close()
        raise
    fds = [c.fd for c in opened]
    for c in opened:
        c.fd = -1  # handed over: the Counter objects must not close them
    return fds


def read_counts(fds: Sequence[int]) -> bytes:
    """One ``read`` per fd, :data:`READ_SIZE` bytes each, in order, as one blob;
    an empty read (event in error state) is :data:`NO_DATA`. ``OSError`` when a
    read fails."""
    chunks = list(map(os.read, fds, repeat(READ_SIZE, len(fds))))
    data = b"".join(chunks)
    if len(data) != READ_SIZE * len(fds):
        data = b"".join(c if len(c) == READ_SIZE else NO_DATA for c in chunks)
    return data


def probe(specs: Sequence[EventSpec]) -> None:
    """Open, enable, read and close each event on this process: raises the
    typed error of the first one the kernel refuses."""
    for spec in specs:
        with Counter(spec, os.getpid()) as c:
            c.read_raw()
