"""The syscall layer: syscall numbers, the errno funnel and its typed errors.

Real perf_event_open calls on real processes, with a software event
(task-clock) standing in for intel_cqm: the errnos are the same.
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
from collections.abc import Iterator

import pytest

from ceilometer_cmt.backends.perf import abi, counter_fds, syscall
from ceilometer_cmt.errors import BackendUnavailable, CmtError, InstanceGone, NotMonitored
from ceilometer_cmt.testing.perf_child import Child, as_nobody, open_fds

TASK_CLOCK = abi.EventSpec(abi.PERF_TYPE_SOFTWARE, abi.PERF_COUNT_SW_TASK_CLOCK)


@pytest.fixture
def child() -> Iterator[Child]:
    with Child() as c:
        yield c


def test_syscall_numbers_per_arch() -> None:
    assert syscall.syscall_number("x86_64") == 298
    assert syscall.syscall_number("aarch64") == 241
    assert syscall.syscall_number("riscv64") == 241
    with pytest.raises(syscall.PerfUnsupported):
        syscall.syscall_number("vax")


def test_errno_funnel_types() -> None:
    assert isinstance(syscall.error_for(errno.EPERM, "x"), syscall.PerfPermissionError)
    assert isinstance(syscall.error_for(errno.ENODEV, "x"), syscall.PerfUnsupported)
    assert isinstance(syscall.error_for(errno.ENFILE, "x"), syscall.PerfTooManyFiles)
    other = syscall.error_for(errno.EBUSY, "x")
    assert type(other) is syscall.PerfError and other.errno == errno.EBUSY


def _libc_read() -> ctypes._CFuncPtr:  # type: ignore[name-defined]
    """read(2) from the module's own use_errno libc (a new function object)."""
    read = syscall.libc().lib["read"]
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
        n = syscall.call(counted_read, r, buf, 8, what=lambda: "read(pipe)")
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
    with pytest.raises(syscall.PerfError) as info:
        syscall.call(read, -1, buf, 8, what=lambda: "read(closed fd)")
    assert info.value.errno == errno.EBADF
    assert "read(closed fd): EBADF" in str(info.value)


def test_dead_process_is_process_gone() -> None:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    with pytest.raises(syscall.PerfProcessGone) as e:
        counter_fds.Counter(TASK_CLOCK, p.pid)
    assert isinstance(e.value, InstanceGone) and isinstance(e.value, CmtError)
    assert e.value.errno == errno.ESRCH


@pytest.mark.parametrize("spec", [
    abi.EventSpec(0x7FFF0000, 1),  # no such PMU type: ENOENT
    abi.EventSpec(abi.PERF_TYPE_SOFTWARE, 0xFFFF),  # no such software event
    abi.EventSpec(abi.PERF_TYPE_SOFTWARE, 1, flags=abi.ATTR_INHERIT, read_format=1 << 20),
])
def test_unsupported_events(child: Child, spec: abi.EventSpec) -> None:
    before = open_fds()
    with pytest.raises(syscall.PerfUnsupported) as e:
        counter_fds.Counter(spec, child.pid)
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
            counter_fds.Counter(abi.EventSpec(abi.PERF_TYPE_SOFTWARE, 1), 1)
            return "OPENED"
        except syscall.PerfPermissionError as e:
            return f"PERM {e.errno} {e}"

    out, status = as_nobody(attempt)
    assert status == 0
    assert out.startswith("PERM"), out
    assert int(out.split()[1]) in (errno.EACCES, errno.EPERM)
    assert "/proc/sys/kernel/perf_event_paranoid" in out
    assert "CAP_PERFMON" in out


def test_fd_limit_is_too_many_files(child: Child) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    counters: list[counter_fds.Counter] = []
    limit = max(int(f) for f in open_fds()) + 8
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        with pytest.raises(syscall.PerfTooManyFiles) as e:
            for _ in range(limit + 1):
                counters.append(counter_fds.Counter(TASK_CLOCK, child.pid))
        assert isinstance(e.value, NotMonitored)
        assert e.value.errno == errno.EMFILE
        assert len(counters) >= 1
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for c in counters:
            c.close()


def test_fds_are_close_on_exec(child: Child) -> None:
    import fcntl
    with counter_fds.Counter(TASK_CLOCK, child.pid) as c:
        assert fcntl.fcntl(c.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
