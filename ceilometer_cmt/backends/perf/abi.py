"""The kernel ABI of ``perf_event_open(2)`` for counting, as ctypes and struct.

Only what a counting (never sampling) monitor needs: ``struct
perf_event_attr`` (:class:`PerfEventAttr`) with its ``PERF_ATTR_SIZE_VER*``
sizes, the PMU type, attr flag, syscall flag and ``ioctl`` constants, :class:`EventSpec`
(what to count) and :func:`make_attr`, which sends the smallest ``attr.size``
that holds the fields in use (why: doc/perf-intel-cqm.md), and the layout of
one ``read`` with ``PERF_FORMAT_TOTAL_TIME_ENABLED |
PERF_FORMAT_TOTAL_TIME_RUNNING``. No syscall here: see
:mod:`~ceilometer_cmt.backends.perf.syscall` and
:mod:`~ceilometer_cmt.backends.perf.counter_fds`.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass

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

# flags of the perf_event_open syscall
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
    """The attr the kernel reads for ``spec``, ``size`` bytes of it (default:
    :func:`attr_size_for`); ValueError for a size no kernel defines."""
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


#: one ``read()`` of a counter with our read_format: value, time enabled, time running
READ_SIZE = 24
READ_FORMAT = struct.Struct("=QQQ")
