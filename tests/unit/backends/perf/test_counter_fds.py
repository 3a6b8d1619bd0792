"""Counter fds, one and in bulk, with real perf_event_open calls on real processes.

Software events (PERF_TYPE_SOFTWARE, task-clock) stand in for intel_cqm:
the ioctls, read format and inheritance are the same.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from ceilometer_cmt.backends.perf import abi, counter_fds, syscall
from ceilometer_cmt.testing.perf_child import Child, open_fds

TASK_CLOCK = abi.EventSpec(abi.PERF_TYPE_SOFTWARE, abi.PERF_COUNT_SW_TASK_CLOCK)


@pytest.fixture
def child() -> Iterator[Child]:
    with Child() as c:
        yield c


def grows(counter: counter_fds.Counter, pause: float = 0.3) -> tuple[int | None, int | None]:
    before = counter.read()
    time.sleep(pause)
    return before, counter.read()


def test_reading_usable() -> None:
    assert counter_fds.Reading(5, 10, 10).usable == 5
    assert counter_fds.Reading(5, 10, 0).usable is None  # never scheduled in
    assert counter_fds.Reading(5, 10, 4).usable is None  # multiplexed
    assert counter_fds.Reading(7, 0, 0).usable is None


def test_read_counts_is_one_blob_in_order_with_empty_reads_as_no_data() -> None:
    """Real counters (on this process, which runs while it reads them), plus
    pipes standing in for the reads a counter cannot give whole: an empty read
    (a perf event in error state reads 0 bytes) and a short one."""
    empty_r, empty_w = os.pipe()
    short_r, short_w = os.pipe()
    os.close(empty_w)  # reads b"" from now on
    os.write(short_w, b"12345")
    fds = counter_fds.open_counters([TASK_CLOCK, TASK_CLOCK], os.getpid())
    try:
        data = counter_fds.read_counts([fds[0], empty_r, short_r, fds[1]])
        assert len(data) == 4 * abi.READ_SIZE
        rows = list(abi.READ_FORMAT.iter_unpack(data))
        assert rows[1] == rows[2] == (0, 0, 0)  # no data, never a count
        assert rows[0][2] > 0 and rows[3][2] > 0  # the counters ran
        assert counter_fds.read_counts([]) == b""
        with pytest.raises(OSError):
            counter_fds.read_counts([fds[0], short_w])  # the write end cannot be read
    finally:
        for fd in (*fds, empty_r, short_r, short_w):
            counter_fds.close_fd(fd)


def test_open_counters_is_all_or_none(child: Child,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # Counter.__del__ is a last resort that would close leaked fds when the
    # exception is released: off, so that only open_counters' own cleanup counts
    monkeypatch.setattr(counter_fds.Counter, "__del__", lambda self: None)
    before = set(os.listdir("/proc/self/fd"))
    bad = abi.EventSpec(abi.PERF_TYPE_SOFTWARE, 0xFFFF)  # no such software event
    with pytest.raises(syscall.PerfUnsupported):
        counter_fds.open_counters([TASK_CLOCK, TASK_CLOCK, bad], child.pid)
    leaked = set(os.listdir("/proc/self/fd")) - before
    for fd in leaked:  # only when the test fails: leave nothing behind
        counter_fds.close_fd(int(fd))
    assert not leaked


def test_counts_while_burning_and_stops_while_asleep(child: Child) -> None:
    with counter_fds.Counter(TASK_CLOCK, child.pid) as c:
        child.burn()
        a, b = grows(c)
        assert a is not None and b is not None and b > a
        child.sleep()
        a, b = grows(c)
        assert a is not None and a == b


def test_never_run_counter_is_none(child: Child) -> None:
    child.sleep()
    with counter_fds.Counter(TASK_CLOCK, child.pid) as c:
        assert c.read() is None  # enabled, but the thread has not run since
        r = c.read_raw()
        assert r.time_running == 0
        child.burn()
        time.sleep(0.1)
        assert (c.read() or 0) > 0


def test_disabled_counter_is_none_until_enabled(child: Child) -> None:
    child.burn()
    with counter_fds.Counter(TASK_CLOCK, child.pid, enable=False) as c:
        time.sleep(0.1)
        assert c.read() is None
        c.enable()
        time.sleep(0.1)
        assert (c.read() or 0) > 0


def test_disable_and_reset(child: Child) -> None:
    child.burn()
    with counter_fds.Counter(TASK_CLOCK, child.pid) as c:
        time.sleep(0.2)
        c.disable()
        a, b = grows(c, 0.2)
        assert a is not None and a == b
        c.reset()
        after_reset = c.read_raw().value
        assert after_reset < a
        c.enable()
        a, b = grows(c, 0.2)
        assert a is not None and b is not None and b > a


def test_inherit_counts_threads_started_after_open(child: Child) -> None:
    child.sleep()
    with counter_fds.Counter(TASK_CLOCK, child.pid) as inherited, \
            counter_fds.Counter(abi.EventSpec(abi.PERF_TYPE_SOFTWARE, abi.PERF_COUNT_SW_TASK_CLOCK,
                                    flags=abi.ATTR_DISABLED), child.pid) as plain:
        child.spawn("late")
        child.cmd("tburn late")
        child.wait_asleep(tids={child.pid})  # only the new thread runs
        a, b = grows(inherited)
        assert b is not None and (a or 0) < b
        p1, p2 = grows(plain)
        assert p1 == p2  # the main thread sleeps; without inherit the new thread is missed


def test_thread_started_before_open_needs_its_own_counter(child: Child) -> None:
    tid = child.spawn("early")
    child.sleep()
    with counter_fds.Counter(TASK_CLOCK, child.pid) as main, \
            counter_fds.Counter(TASK_CLOCK, tid) as own:
        child.cmd("tburn early")
        child.wait_asleep(tids={child.pid})  # only the old thread runs
        m1, m2 = grows(main)
        o1, o2 = grows(own)
        assert m1 == m2  # inherit does not reach back to existing threads
        assert o2 is not None and (o1 or 0) < o2


def test_closed_counter_refuses_io(child: Child) -> None:
    c = counter_fds.Counter(TASK_CLOCK, child.pid)
    c.close()
    c.close()  # idempotent
    assert c.closed
    with pytest.raises(syscall.PerfError):
        c.read()
    with pytest.raises(syscall.PerfError):
        c.enable()


def test_thousand_open_close_cycles_leave_fds_unchanged(child: Child) -> None:
    before = open_fds()
    for i in range(1000):
        with counter_fds.Counter(TASK_CLOCK, child.pid) as c:
            if i % 100 == 0:
                c.read_raw()
    for _ in range(50):  # error paths too
        with pytest.raises(syscall.PerfUnsupported):
            counter_fds.Counter(abi.EventSpec(0x7FFF0000, 1), child.pid)
    assert open_fds() == before
