"""The ctypes perf layer, with real perf_event_open calls on real processes.

Software events (PERF_TYPE_SOFTWARE, task-clock) stand in for intel_cqm:
the syscall, attr layout, ioctls, read format and errno handling are the same.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from ceilometer_cmt.backends.perf import abi as pe
from ceilometer_cmt.errors import BackendUnavailable, CmtError, InstanceGone, NotMonitored
from ceilometer_cmt.testing.perf_child import Child, as_nobody, open_fds

TASK_CLOCK = pe.EventSpec(pe.PERF_TYPE_SOFTWARE, pe.PERF_COUNT_SW_TASK_CLOCK)


@pytest.fixture
def child() -> Iterator[Child]:
    with Child() as c:
        yield c


def grows(counter: pe.Counter, pause: float = 0.3) -> tuple[int | None, int | None]:
    before = counter.read()
    time.sleep(pause)
    return before, counter.read()


# ---------------------------------------------------------------- layout

def test_syscall_numbers_per_arch() -> None:
    assert pe.syscall_number("x86_64") == 298
    assert pe.syscall_number("aarch64") == 241
    assert pe.syscall_number("riscv64") == 241
    with pytest.raises(pe.PerfUnsupported):
        pe.syscall_number("vax")


def test_attr_layout_matches_uapi_header() -> None:
    a = pe.PerfEventAttr
    assert ctypes.sizeof(a) == pe.PERF_ATTR_SIZE_VER7 == 128
    offsets = {name: getattr(a, name).offset for name, _ in a._fields_}
    assert offsets["config"] == 8
    assert offsets["read_format"] == 32
    assert offsets["flags"] == 40
    assert offsets["wakeup_events"] == 48
    assert offsets["config1"] == 56 and offsets["config1"] + 8 == pe.PERF_ATTR_SIZE_VER0
    assert offsets["config2"] + 8 == pe.PERF_ATTR_SIZE_VER1
    assert offsets["branch_sample_type"] + 8 == pe.PERF_ATTR_SIZE_VER2
    assert offsets["clockid"] + 4 == pe.PERF_ATTR_SIZE_VER3
    assert offsets["sample_regs_intr"] + 8 == pe.PERF_ATTR_SIZE_VER4
    assert offsets["reserved_2"] + 2 == pe.PERF_ATTR_SIZE_VER5
    assert offsets["reserved_3"] + 4 == pe.PERF_ATTR_SIZE_VER6


def test_attr_size_is_the_smallest_version_that_fits() -> None:
    assert pe.attr_size_for(TASK_CLOCK) == 64
    with_config2 = pe.EventSpec(7, 1, config2=5)
    assert pe.attr_size_for(with_config2) == 72
    attr = pe.make_attr(with_config2)
    assert (attr.size, attr.config2) == (72, 5)
    with pytest.raises(ValueError):
        pe.make_attr(with_config2, size=64)
    with pytest.raises(ValueError):
        pe.make_attr(TASK_CLOCK, size=65)
    attr = pe.make_attr(TASK_CLOCK)
    assert attr.flags == pe.ATTR_DISABLED | pe.ATTR_INHERIT
    assert attr.read_format == 3


@pytest.mark.parametrize("size", pe.ATTR_SIZES)
def test_every_attr_size_opens(child: Child, size: int) -> None:
    with pe.Counter(TASK_CLOCK, child.pid, attr_size=size) as c:
        assert c.fd >= 0


def test_reading_usable() -> None:
    assert pe.Reading(5, 10, 10).usable == 5
    assert pe.Reading(5, 10, 0).usable is None  # never scheduled in
    assert pe.Reading(5, 10, 4).usable is None  # multiplexed
    assert pe.Reading(7, 0, 0).usable is None


def test_read_counts_is_one_blob_in_order_with_empty_reads_as_no_data() -> None:
    """Real counters (on this process, which runs while it reads them), plus
    pipes standing in for the reads a counter cannot give whole: an empty read
    (a perf event in error state reads 0 bytes) and a short one."""
    empty_r, empty_w = os.pipe()
    short_r, short_w = os.pipe()
    os.close(empty_w)  # reads b"" from now on
    os.write(short_w, b"12345")
    fds = pe.open_counters([TASK_CLOCK, TASK_CLOCK], os.getpid())
    try:
        data = pe.read_counts([fds[0], empty_r, short_r, fds[1]])
        assert len(data) == 4 * pe.READ_SIZE
        rows = list(pe.READ_FORMAT.iter_unpack(data))
        assert rows[1] == rows[2] == (0, 0, 0)  # no data, never a count
        assert rows[0][2] > 0 and rows[3][2] > 0  # the counters ran
        assert pe.read_counts([]) == b""
        with pytest.raises(OSError):
            pe.read_counts([fds[0], short_w])  # the write end cannot be read
    finally:
        for fd in (*fds, empty_r, short_r, short_w):
            pe.close_fd(fd)


def test_open_counters_is_all_or_none(child: Child,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # Counter.__del__ is a last resort that would close leaked fds when the
    # exception is released: off, so that only open_counters' own cleanup counts
    monkeypatch.setattr(pe.Counter, "__del__", lambda self: None)
    before = set(os.listdir("/proc/self/fd"))
    bad = pe.EventSpec(pe.PERF_TYPE_SOFTWARE, 0xFFFF)  # no such software event
    with pytest.raises(pe.PerfUnsupported):
        pe.open_counters([TASK_CLOCK, TASK_CLOCK, bad], child.pid)
    leaked = set(os.listdir("/proc/self/fd")) - before
    for fd in leaked:  # only when the test fails: leave nothing behind
        pe.close_fd(int(fd))
    assert not leaked


# ---------------------------------------------------------------- counting

def test_counts_while_burning_and_stops_while_asleep(child: Child) -> None:
    with pe.Counter(TASK_CLOCK, child.pid) as c:
        child.burn()
        a, b = grows(c)
        assert a is not None and b is not None and b > a
        child.sleep()
        a, b = grows(c)
        assert a is not None and a == b


def test_never_run_counter_is_none(child: Child) -> None:
    child.sleep()
    with pe.Counter(TASK_CLOCK, child.pid) as c:
        assert c.read() is None  # enabled, but the thread has not run since
        r = c.read_raw()
        assert r.time_running == 0
        child.burn()
        time.sleep(0.1)
        assert (c.read() or 0) > 0


def test_disabled_counter_is_none_until_enabled(child: Child) -> None:
    child.burn()
    with pe.Counter(TASK_CLOCK, child.pid, enable=False) as c:
        time.sleep(0.1)
        assert c.read() is None
        c.enable()
        time.sleep(0.1)
        assert (c.read() or 0) > 0


def test_disable_and_reset(child: Child) -> None:
    child.burn()
    with pe.Counter(TASK_CLOCK, child.pid) as c:
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
    with pe.Counter(TASK_CLOCK, child.pid) as inherited, \
            pe.Counter(pe.EventSpec(pe.PERF_TYPE_SOFTWARE, pe.PERF_COUNT_SW_TASK_CLOCK,
                                    flags=pe.ATTR_DISABLED), child.pid) as plain:
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
    with pe.Counter(TASK_CLOCK, child.pid) as main, pe.Counter(TASK_CLOCK, tid) as own:
        child.cmd("tburn early")
        child.wait_asleep(tids={child.pid})  # only the old thread runs
        m1, m2 = grows(main)
        o1, o2 = grows(own)
        assert m1 == m2  # inherit does not reach back to existing threads
        assert o2 is not None and (o1 or 0) < o2


# ---------------------------------------------------------------- errors

def test_dead_process_is_process_gone() -> None:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    with pytest.raises(pe.PerfProcessGone) as e:
        pe.Counter(TASK_CLOCK, p.pid)
    assert isinstance(e.value, InstanceGone) and isinstance(e.value, CmtError)
    assert e.value.errno == errno.ESRCH


@pytest.mark.parametrize("spec", [
    pe.EventSpec(0x7FFF0000, 1),  # no such PMU type: ENOENT
    pe.EventSpec(pe.PERF_TYPE_SOFTWARE, 0xFFFF),  # no such software event
    pe.EventSpec(pe.PERF_TYPE_SOFTWARE, 1, flags=pe.ATTR_INHERIT, read_format=1 << 20),
])
def test_unsupported_events(child: Child, spec: pe.EventSpec) -> None:
    before = open_fds()
    with pytest.raises(pe.PerfUnsupported) as e:
        pe.Counter(spec, child.pid)
    assert isinstance(e.value, BackendUnavailable)
    assert e.value.errno in (errno.ENOENT, errno.EINVAL, errno.ENODEV, errno.EOPNOTSUPP)
    assert open_fds() == before


def test_permission_error_names_paranoid_and_capability() -> None:
    """An unprivileged user may not count another user's process (pid 1).

    A forked child drops to nobody (the venv's interpreter lives under /root,
    which nobody cannot exec) and reports through a pipe.
    """
    def attempt() -> str:
        try:
            pe.Counter(pe.EventSpec(pe.PERF_TYPE_SOFTWARE, 1), 1)
            return "OPENED"
        except pe.PerfPermissionError as e:
            return f"PERM {e.errno} {e}"

    out, status = as_nobody(attempt)
    assert status == 0
    assert out.startswith("PERM"), out
    assert int(out.split()[1]) in (errno.EACCES, errno.EPERM)
    assert "/proc/sys/kernel/perf_event_paranoid" in out
    assert "CAP_PERFMON" in out


def test_fd_limit_is_too_many_files(child: Child) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    counters: list[pe.Counter] = []
    limit = max(int(f) for f in open_fds()) + 8
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        with pytest.raises(pe.PerfTooManyFiles) as e:
            for _ in range(limit + 1):
                counters.append(pe.Counter(TASK_CLOCK, child.pid))
        assert isinstance(e.value, NotMonitored)
        assert e.value.errno == errno.EMFILE
        assert len(counters) >= 1
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for c in counters:
            c.close()


def test_closed_counter_refuses_io(child: Child) -> None:
    c = pe.Counter(TASK_CLOCK, child.pid)
    c.close()
    c.close()  # idempotent
    assert c.closed
    with pytest.raises(pe.PerfError):
        c.read()
    with pytest.raises(pe.PerfError):
        c.enable()


def test_errno_funnel_types() -> None:
    assert isinstance(pe._raise_for(errno.EPERM, "x"), pe.PerfPermissionError)
    assert isinstance(pe._raise_for(errno.ENODEV, "x"), pe.PerfUnsupported)
    assert isinstance(pe._raise_for(errno.ENFILE, "x"), pe.PerfTooManyFiles)
    other = pe._raise_for(errno.EBUSY, "x")
    assert type(other) is pe.PerfError and other.errno == errno.EBUSY


def _libc_read() -> ctypes._CFuncPtr:  # type: ignore[name-defined]
    """read(2) from the module's own use_errno libc (a new function object)."""
    read = pe.libc().lib["read"]
    read.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
    read.restype = ctypes.c_ssize_t
    return read


def test_funnel_retries_a_really_interrupted_syscall() -> None:
    """A read(2) blocked on an empty pipe is interrupted by real signals:
    Python installs its handlers without SA_RESTART, so the kernel returns
    EINTR each time. The funnel calls again until the data arrives."""
    read = _libc_read()
    r, w = os.pipe()
    buf = ctypes.create_string_buffer(8)
    calls = handled = 0
    failures: list[int] = []  # errno of every call that failed

    def counted_read(*args: object) -> int:
        nonlocal calls
        calls += 1
        result = int(read(*args))
        if result < 0:
            failures.append(ctypes.get_errno())
        return result

    def on_signal(signum: int, frame: object) -> None:
        nonlocal handled
        handled += 1
        if handled == 3:
            os.write(w, b"12345678")

    main = threading.get_ident()
    stop = threading.Event()

    def kick() -> None:
        for _ in range(100):  # ~5 s; then unblock the read whatever happened
            if stop.wait(0.05):
                return
            signal.pthread_kill(main, signal.SIGUSR1)
        os.write(w, b"timeout!")

    old = signal.signal(signal.SIGUSR1, on_signal)
    kicker = threading.Thread(target=kick, daemon=True)
    kicker.start()
    try:
        n = pe._call(counted_read, r, buf, 8, what=lambda: "read(pipe)")
    finally:
        stop.set()
        kicker.join()
        signal.signal(signal.SIGUSR1, old)
        os.close(r)
        os.close(w)
    assert (n, buf.raw) == (8, b"12345678")
    assert handled >= 3
    # interrupted at least once, every failure was EINTR and was called again
    assert failures and set(failures) == {errno.EINTR}
    assert calls == len(failures) + 1


def test_funnel_turns_other_errnos_into_typed_errors() -> None:
    read = _libc_read()
    buf = ctypes.create_string_buffer(8)
    with pytest.raises(pe.PerfError) as info:
        pe._call(read, -1, buf, 8, what=lambda: "read(closed fd)")
    assert info.value.errno == errno.EBADF
    assert "read(closed fd): EBADF" in str(info.value)


# ---------------------------------------------------------------- no leaks

def test_thousand_open_close_cycles_leave_fds_unchanged(child: Child) -> None:
    before = open_fds()
    for i in range(1000):
        with pe.Counter(TASK_CLOCK, child.pid) as c:
            if i % 100 == 0:
                c.read_raw()
    for _ in range(50):  # error paths too
        with pytest.raises(pe.PerfUnsupported):
            pe.Counter(pe.EventSpec(0x7FFF0000, 1), child.pid)
    assert open_fds() == before


def test_fds_are_close_on_exec(child: Child) -> None:
    import fcntl
    with pe.Counter(TASK_CLOCK, child.pid) as c:
        assert fcntl.fcntl(c.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
