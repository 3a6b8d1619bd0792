"""The privsep daemon's perf counter registry, called in process.

What the daemon does for an unprivileged agent (the entrypoints of
ceilometer_cmt.privsep.entrypoints only wrap these calls): real perf_event_open on
real stand-in qemu processes, the fixture intel_cqm PMU of type 1
(PERF_TYPE_SOFTWARE) as the daemon's sysfs, /proc as its procfs.
"""

from __future__ import annotations

import errno
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ceilometer_cmt.backends.perf import pmu
from ceilometer_cmt.backends.perf.abi import PERF_TYPE_HARDWARE, EventSpec
from ceilometer_cmt.backends.perf.backend import PerfBackend
from ceilometer_cmt.backends.perf.syscall import PerfProcessGone, PerfTooManyFiles
from ceilometer_cmt.privsep.perf_registry import CounterRegistry, to_wire
from ceilometer_cmt.privsep.rules import QemuRule
from ceilometer_cmt.readings import ALL_DOMAINS, InstanceRef
from ceilometer_cmt.testing.fakehost import StandInQemu
from tests.support import paths

SOFTWARE = str(paths.SOFTWARE)
EVENTS = [list(to_wire(spec)) for spec in
          (pmu.discover(SOFTWARE).spec(n) for n in pmu.KNOWN_EVENTS)]
UNPACK = struct.Struct("=QQQ").unpack
#: the stand-in qemus run this interpreter: the tests' own emulator entry
EMULATOR = os.path.realpath(sys.executable)


def rule(pid_dir: str) -> QemuRule:
    return QemuRule(pid_dir, emulators=(EMULATOR,))


def open_fds() -> set[str]:
    """Open fds of this process (without the one os.listdir used)."""
    fd = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY)
    try:
        return set(os.listdir(fd)) - {str(fd)}
    finally:
        os.close(fd)


def perf_fds() -> set[str]:
    out = set()
    for fd in open_fds():
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[perf_event]":
                out.add(fd)
        except OSError:
            pass
    return out


@pytest.fixture
def pid_dir() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="cmt-perf-reg-")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def qemus(pid_dir: str) -> Iterator[list[StandInQemu]]:
    started: list[StandInQemu] = []
    try:
        for name in ("instance-r1", "instance-r2"):
            started.append(StandInQemu(name, pid_dir, extra_threads=1).start())
        yield started
    finally:
        for q in started:
            q.stop()


@pytest.fixture
def foreign() -> Iterator[subprocess.Popen[bytes]]:
    """A process that is no qemu, whose argv still says ``-name x``."""
    p = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()",
                          "-name", "instance-r1"], stdin=subprocess.PIPE)
    try:
        yield p
    finally:
        p.kill()
        p.wait()
        assert p.stdin is not None
        p.stdin.close()


@pytest.fixture
def registry(pid_dir: str) -> Iterator[CounterRegistry]:
    r = CounterRegistry(SOFTWARE, rule(pid_dir), max_counters=9)
    try:
        yield r
    finally:
        r.close_all()


def values(blob: bytes) -> list[int]:
    assert len(blob) % 24 == 0
    return [UNPACK(blob[i:i + 24])[0] for i in range(0, len(blob), 24)]


def test_counts_a_qemu_thread_and_reads_in_one_batch(registry: CounterRegistry,
                                                     qemus: list[StandInQemu]) -> None:
    q = qemus[0]
    handles = [h for tid in q.tids for h in registry.open(EVENTS, q.pid, tid, q.domain_name)]
    assert len(handles) == 3 * len(q.tids) == len(registry) == len(set(handles))
    q.burn()
    time.sleep(0.2)
    first = values(registry.read(handles))
    time.sleep(0.2)
    second = values(registry.read(handles))
    q.rest()
    # task-clock of the burning threads grew; nothing is summed or scaled here
    assert sum(second[0::3]) > sum(first[0::3]) > 0
    assert values(registry.read(handles[1:2] + handles[:1]))[1] >= first[0]


def test_events_must_be_the_daemons_own_pmu(registry: CounterRegistry,
                                            qemus: list[StandInQemu]) -> None:
    q = qemus[0]
    before = perf_fds()
    for bad in ([[1, 0x04, 0, 0]],  # a software event the PMU does not list
                [[PERF_TYPE_HARDWARE, 0, 0, 0]],  # cycles
                [EVENTS[0][:1] + [EVENTS[0][1] | 1 << 8, 0, 0]],  # extra config bits
                [EVENTS[0] + [0]],  # not (type, config, config1, config2)
                [EVENTS[0], [9, 1, 0, 0]]):  # one bad event spoils the request
        with pytest.raises(PermissionError, match="not an event of the intel_cqm PMU"):
            registry.open(bad, q.pid, q.pid, q.domain_name)
    with pytest.raises(PermissionError):
        registry.probe([[PERF_TYPE_HARDWARE, 0, 0, 0]])
    assert len(registry) == 0 and perf_fds() == before
    # the client cannot change the attr bits either: only type and config travel
    with pytest.raises(ValueError, match="attr bits"):
        to_wire(EventSpec(1, 1, flags=0))
    registry.probe(EVENTS)
    # the daemon's own sysfs decides: the same request against another PMU tree
    with tempfile.TemporaryDirectory() as other:
        shutil.copytree(SOFTWARE, other, dirs_exist_ok=True)
        Path(other, "bus/event_source/devices/intel_cqm/type").write_text("9\n")
        with pytest.raises(PermissionError):
            CounterRegistry(other, registry.rule).open(EVENTS, q.pid, q.pid, q.domain_name)


def test_only_threads_of_the_named_qemu(registry: CounterRegistry, qemus: list[StandInQemu],
                                        foreign: subprocess.Popen[bytes]) -> None:
    a, b = qemus
    before = perf_fds()
    with pytest.raises(PermissionError, match="not the qemu of"):
        registry.open(EVENTS, foreign.pid, foreign.pid, "instance-r1")  # "-name x", no guest=
    with pytest.raises(PermissionError, match="not the qemu of"):
        registry.open(EVENTS, os.getpid(), os.getpid(), a.domain_name)  # the daemon itself
    with pytest.raises(PermissionError, match="not the qemu of"):
        registry.open(EVENTS, a.pid, a.pid, b.domain_name)  # another domain's name
    with pytest.raises(PermissionError, match="rule threads.*not threads of the qemu"):
        registry.open(EVENTS, a.pid, foreign.pid, a.domain_name)  # not a thread of a
    with pytest.raises(PermissionError, match="rule threads.*not threads of the qemu"):
        registry.open(EVENTS, a.pid, b.tids[-1], a.domain_name)  # b's thread, a's pid
    with pytest.raises(PermissionError, match="rule qemu.*not a configured emulator"):
        CounterRegistry(SOFTWARE, QemuRule(registry.rule.pid_dir)).open(
            EVENTS, a.pid, a.pid, a.domain_name)  # the default emulators: qemu only
    for pid, tid in ((0, 1), (a.pid, -1), (-a.pid, a.pid)):
        with pytest.raises(PermissionError):
            registry.open(EVENTS, pid, tid, a.domain_name)
    with pytest.raises(Exception, match="odd libvirt domain name"):
        registry.open(EVENTS, a.pid, a.pid, "../x")
    assert len(registry) == 0 and perf_fds() == before


def test_gone_process_and_cap(registry: CounterRegistry, qemus: list[StandInQemu]) -> None:
    a, b = qemus
    before = perf_fds()
    kept = registry.open(EVENTS, a.pid, a.tids[0], a.domain_name)
    registry.open(EVENTS, a.pid, a.tids[1], a.domain_name)
    b_handles = registry.open(EVENTS, b.pid, b.pid, b.domain_name)
    assert len(registry) == 9 == registry.max_counters
    with pytest.raises(PerfTooManyFiles, match="cap is 9"):
        registry.open(EVENTS, b.pid, b.tids[1], b.domain_name)
    assert len(registry) == 9
    registry.close(b_handles)
    registry.close(b_handles)  # idempotent
    assert len(b.tids) == 2
    assert len(registry.open(EVENTS, b.pid, b.tids[1], b.domain_name)) == 3
    pid = b.pid
    b.stop()
    with pytest.raises(PerfProcessGone):
        registry.open(EVENTS, pid, pid, "instance-r2")
    # an unknown (or closed) handle fails the whole batch, like a bad fd would
    with pytest.raises(OSError) as e:
        registry.read(kept + b_handles[:1])
    assert e.value.errno == errno.EBADF
    assert len(values(registry.read(kept))) == 3
    registry.close_all()
    assert len(registry) == 0 and perf_fds() == before


def test_close_releases_the_fds(pid_dir: str, qemus: list[StandInQemu]) -> None:
    q = qemus[0]
    registry = CounterRegistry(SOFTWARE, rule(pid_dir))
    registry.allowed()  # discovery opens and closes sysfs files only
    before = perf_fds()
    handles = [registry.open(EVENTS, q.pid, tid, q.domain_name) for tid in q.tids]
    assert len(perf_fds() - before) == 3 * len(q.tids)
    registry.close(handles[0])
    assert len(perf_fds() - before) == 3 * (len(q.tids) - 1)
    registry.close_all()
    assert perf_fds() == before


def test_perf_backend_on_the_registry(pid_dir: str, qemus: list[StandInQemu]) -> None:
    """PerfBackend with a provider answering from the registry (as PrivsepCounters
    does through the daemon): same readings, one read call per cycle."""

    class Counted:
        def __init__(self, registry: CounterRegistry) -> None:
            self.r = registry
            self.reads = 0

        def open(self, specs: list[EventSpec], pid: int, tid: int, name: str) -> list[int]:
            return self.r.open([list(to_wire(s)) for s in specs], pid, tid, name)

        def read(self, handles: list[int]) -> bytes:
            self.reads += 1
            return self.r.read(handles)

        def close(self, handles: list[int]) -> None:
            self.r.close(handles)

        def probe(self, specs: list[EventSpec]) -> None:
            self.r.probe([list(to_wire(s)) for s in specs])

    registry = CounterRegistry(SOFTWARE, rule(pid_dir))
    provider = Counted(registry)
    refs = [InstanceRef(f"uuid-{q.domain_name}", q.domain_name) for q in qemus]
    for q in qemus:
        q.burn()
    try:
        with PerfBackend(SOFTWARE, "/proc", pid_dir, counters=provider) as backend:
            backend.probe()
            backend.sync(refs)
            time.sleep(0.2)
            first = backend.sync(refs)
            time.sleep(0.2)
            reads = provider.reads
            second = backend.sync(refs)
            assert provider.reads == reads + 1  # one batch for both instances
            assert first.unmonitored == second.unmonitored == {}
            for ref in refs:
                a = first.readings[ref.uuid].occupancy[ALL_DOMAINS]
                b = second.readings[ref.uuid].occupancy[ALL_DOMAINS]
                assert a is not None and b is not None and b > a > 0
            assert len(registry) == 3 * sum(len(q.tids) for q in qemus)
            backend.sync(refs[1:])
            assert len(registry) == 3 * len(qemus[1].tids)
        assert len(registry) == 0
    finally:
        for q in qemus:
            q.rest()
        registry.close_all()


def test_reads_and_closes_hold_one_lock(registry: CounterRegistry, qemus: list[StandInQemu],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A close during a read would free an fd number the read is about to use
    (and privsep serves requests from a pool): the read holds the lock."""
    from ceilometer_cmt.backends.perf import counter_fds

    q = qemus[0]
    handles = registry.open(EVENTS, q.pid, q.pid, q.domain_name)
    held: list[bool] = []
    real = counter_fds.read_counts

    def read_counts(fds: list[int]) -> bytes:
        held.append(registry._lock.locked())
        return real(fds)

    monkeypatch.setattr(counter_fds, "read_counts", read_counts)
    assert len(values(registry.read(handles))) == 3
    assert held == [True]
    registry.close(handles)
