"""DirectCounters: the provider whose handles are perf fds of this process."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from ceilometer_cmt.backends.perf import abi
from ceilometer_cmt.backends.perf.counter_providers import CounterProvider, DirectCounters
from ceilometer_cmt.backends.perf.syscall import PerfProcessGone, PerfUnsupported
from ceilometer_cmt.testing.perf_child import open_fds

TASK_CLOCK = abi.EventSpec(abi.PERF_TYPE_SOFTWARE, abi.PERF_COUNT_SW_TASK_CLOCK)
PAGE_FAULTS = abi.EventSpec(abi.PERF_TYPE_SOFTWARE, abi.PERF_COUNT_SW_PAGE_FAULTS)


def test_open_read_close_round_trip() -> None:
    provider: CounterProvider = DirectCounters()
    before = open_fds()
    pid = os.getpid()
    handles = provider.open([TASK_CLOCK, PAGE_FAULTS], pid, pid, "instance-1")
    try:
        assert len(handles) == 2
        data = provider.read(handles)
        assert len(data) == 2 * abi.READ_SIZE
        value, enabled, running = abi.READ_FORMAT.unpack(data[:abi.READ_SIZE])
        assert running > 0 and value > 0  # this thread runs: task-clock counts
    finally:
        provider.close(handles)
    assert open_fds() == before
    provider.close(handles)  # closing again does not raise


def test_exited_thread_is_process_gone() -> None:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    with pytest.raises(PerfProcessGone) as e:
        DirectCounters().open([TASK_CLOCK], p.pid, p.pid, "instance-1")
    assert e.value.errno == errno.ESRCH


def test_probe() -> None:
    DirectCounters().probe([TASK_CLOCK, PAGE_FAULTS])
    with pytest.raises(PerfUnsupported):
        DirectCounters().probe([TASK_CLOCK, abi.EventSpec(0x7FFF0000, 1)])
