"""The perf backend end to end: fixture intel_cqm tree whose type is
PERF_TYPE_SOFTWARE (so llc_occupancy = task-clock, total_bytes = page-faults,
local_bytes = context-switches), real perf_event_open on real stand-in qemu
processes with pidfiles in a tmp dir and /proc as procfs."""

from __future__ import annotations

import os
import resource
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ceilometer_cmt.backends.perf import pmu as perf_pmu
from ceilometer_cmt.backends.perf.backend import PerfBackend
from ceilometer_cmt.backends.perf.syscall import PerfPermissionError, PerfUnsupported
from ceilometer_cmt.errors import BackendUnavailable
from ceilometer_cmt.linux.sysfs_cache import read_host_cache
from ceilometer_cmt.readings import ALL_DOMAINS, BackendCycle, InstanceRef
from ceilometer_cmt.testing.perf_child import Child, as_nobody, open_fds, write_pidfile
from tests.support import paths
from tests.support.as_user import public_workdir

FIXTURES = paths.PERF_FIXTURES
SOFTWARE = str(FIXTURES / "software")
PMU_REL = Path("bus/event_source/devices/intel_cqm")
UUID_A = "6b2b2c3e-5a7d-4c55-9b1e-0a1f2e3d4c5b"
UUID_B = "0f8e7d6c-5b4a-4321-8fed-cba987654321"

Spawn = Callable[[str], Child]


@pytest.fixture
def pid_dir() -> Iterator[str]:
    # reachable by anybody (not in TMPDIR, which may be private), so a test that
    # drops to nobody still reads the pidfiles
    with public_workdir("cmt-perf-pids-") as d:
        yield d


@pytest.fixture
def spawn(pid_dir: str) -> Iterator[Spawn]:
    children: list[Child] = []

    def make(domain: str) -> Child:
        c = Child(domain, pid_dir)
        children.append(c)
        return c

    try:
        yield make
    finally:
        for c in children:
            c.close()


@pytest.fixture
def backend(pid_dir: str) -> Iterator[PerfBackend]:
    b = PerfBackend(sysfs_root=SOFTWARE, proc_root="/proc", libvirt_pid_dir=pid_dir)
    try:
        yield b
    finally:
        b.close()


def occupancy(cycle: BackendCycle, uuid: str) -> int | None:
    return cycle.readings[uuid].occupancy[ALL_DOMAINS]


def occ_after(backend: PerfBackend, ref: InstanceRef, pause: float = 0.3) -> tuple[int, int]:
    a = occupancy(backend.sync([ref]), ref.uuid)
    time.sleep(pause)
    b = occupancy(backend.sync([ref]), ref.uuid)
    return a or 0, b or 0


# ---------------------------------------------------------------- values

def test_values_grow_while_burning_and_stop_while_asleep(backend: PerfBackend,
                                                         spawn: Spawn) -> None:
    child = spawn("instance-0001")
    ref = InstanceRef(UUID_A, "instance-0001")
    cycle = backend.sync([ref])
    assert cycle.unmonitored == {}
    reading = cycle.readings[UUID_A]
    assert set(reading.occupancy) == {ALL_DOMAINS}
    key = backend.counter_key(UUID_A)
    assert key is not None and key.startswith(f"perf/{child.pid}/")
    assert set(reading.mbm_total) == {key} and set(reading.mbm_local) == {key}
    child.burn()
    a, b = occ_after(backend, ref)
    assert b > a > 0
    child.sleep()
    a, b = occ_after(backend, ref)
    assert a == b > 0
    # the "context switches" stand-in for local_bytes kept a value too
    assert (backend.sync([ref]).readings[UUID_A].mbm_local[key] or 0) > 0


def test_instance_that_never_ran_reads_none_not_zero(backend: PerfBackend,
                                                     spawn: Spawn) -> None:
    child = spawn("instance-idle")
    child.sleep()
    cycle = backend.sync([InstanceRef(UUID_A, "instance-idle")])
    reading = cycle.readings[UUID_A]
    assert reading.occupancy == {ALL_DOMAINS: None}
    assert list(reading.mbm_total.values()) == [None]


def test_every_existing_thread_gets_a_counter(backend: PerfBackend, spawn: Spawn) -> None:
    child = spawn("instance-0002")
    early = child.spawn("early")
    child.sleep()
    ref = InstanceRef(UUID_A, "instance-0002")
    cycle = backend.sync([ref])
    tids = child.tids()
    assert early in tids and backend.tracked_tids(UUID_A) == tids
    assert len(backend.tracked_fds(UUID_A)) == 3 * len(tids)
    assert cycle.monitors_used == len(tids)  # intel_cqm: one RMID per opened TID
    child.cmd("tburn early")  # a thread older than the counters burns
    a, b = occ_after(backend, ref)
    assert b > a


def test_thread_started_later_is_inherited_without_new_fds(backend: PerfBackend,
                                                           spawn: Spawn) -> None:
    child = spawn("instance-0003")
    child.sleep()
    ref = InstanceRef(UUID_A, "instance-0003")
    backend.sync([ref])
    fds, tids = backend.tracked_fds(UUID_A), backend.tracked_tids(UUID_A)
    late = child.spawn("late")
    child.cmd("tburn late")
    a, b = occ_after(backend, ref)
    assert b > a
    assert late not in backend.tracked_tids(UUID_A)
    assert backend.tracked_fds(UUID_A) == fds and backend.tracked_tids(UUID_A) == tids


def test_scale_from_sysfs_is_applied(tmp_path: Path, pid_dir: str, spawn: Spawn) -> None:
    shutil.copytree(SOFTWARE, tmp_path / "sys")
    (tmp_path / "sys" / PMU_REL / "events" / "llc_occupancy.scale").write_text("64\n")
    child = spawn("instance-scaled")
    child.burn()
    ref = InstanceRef(UUID_A, "instance-scaled")
    with PerfBackend(SOFTWARE, "/proc", pid_dir) as plain, \
            PerfBackend(str(tmp_path / "sys"), "/proc", pid_dir) as scaled:
        plain.sync([ref])
        scaled.sync([ref])
        time.sleep(0.2)
        child.sleep()
        raw = occupancy(plain.sync([ref]), UUID_A)
        in_bytes = occupancy(scaled.sync([ref]), UUID_A)
    # the same thread time seen by two counter sets opened one after the other
    assert raw is not None and in_bytes is not None
    assert in_bytes % 64 == 0
    assert abs(in_bytes / 64 - raw) <= raw * 0.2


def test_event_table_override(pid_dir: str, spawn: Spawn) -> None:
    spawn("instance-occ")
    ref = InstanceRef(UUID_A, "instance-occ")
    with PerfBackend(SOFTWARE, "/proc", pid_dir, events={"occupancy": "llc_occupancy"}) as b:
        reading = b.sync([ref]).readings[UUID_A]
        assert set(reading.occupancy) == {ALL_DOMAINS}
        assert reading.mbm_total == {} and reading.mbm_local == {}
        assert len(b.tracked_fds(UUID_A)) == len(b.tracked_tids(UUID_A))
    with pytest.raises(ValueError):
        PerfBackend(SOFTWARE, "/proc", pid_dir, events={"bandwidth": "total_bytes"})
    with pytest.raises(BackendUnavailable):
        PerfBackend(SOFTWARE, "/proc", pid_dir, events={"occupancy": "no_such_event"})


@pytest.mark.parametrize("needed,roles", [
    ({"llc_occupancy"}, ["occupancy"]),
    ({"mbm_total_bytes", "mbm_local_bytes", "core_energy"}, ["mbm_total", "mbm_local"]),
    (None, ["occupancy", "mbm_total", "mbm_local"]),
    (frozenset(), ["occupancy"]),  # host meters only: the one event the backend needs
])
def test_only_the_needed_events_are_counted(pid_dir: str, spawn: Spawn,
                                            needed: frozenset[str] | None,
                                            roles: list[str]) -> None:
    """One counter per thread per event: the meters polled decide the events."""
    from ceilometer_cmt.backends.perf.backend import perf_events

    spawn("instance-occ")
    ref = InstanceRef(UUID_A, "instance-occ")
    with PerfBackend(SOFTWARE, "/proc", pid_dir, events=perf_events(needed)) as b:
        assert list(b.events) == roles
        b.sync([ref])
        assert len(b.tracked_fds(UUID_A)) == len(roles) * len(b.tracked_tids(UUID_A))


# ---------------------------------------------------------------- lifecycle

def test_instance_leaving_closes_its_fds(backend: PerfBackend, spawn: Spawn) -> None:
    spawn("instance-a")
    spawn("instance-b")
    backend.sync([])  # arms the pid_dir watch (one inotify fd, held until close)
    before = open_fds()
    refs = [InstanceRef(UUID_A, "instance-a"), InstanceRef(UUID_B, "instance-b")]
    backend.sync(refs)
    fds_a = backend.tracked_fds(UUID_A)
    assert fds_a and backend.tracked_fds(UUID_B)
    cycle = backend.sync(refs[1:])
    assert set(cycle.readings) == {UUID_B}
    assert backend.tracked_fds(UUID_A) == []
    assert not {str(fd) for fd in fds_a} & (open_fds() - before)
    backend.sync([])
    assert open_fds() == before


def test_restarted_domain_gets_new_counters_and_key(backend: PerfBackend, spawn: Spawn,
                                                    pid_dir: str) -> None:
    first = spawn("instance-r")
    ref = InstanceRef(UUID_A, "instance-r")
    backend.sync([ref])
    key1 = backend.counter_key(UUID_A)
    first.close()  # stop: qemu exits, libvirt removes the pidfile
    cycle = backend.sync([ref])
    assert UUID_A in cycle.unmonitored and "pidfile" in cycle.unmonitored[UUID_A]
    assert backend.tracked_fds(UUID_A) == []
    second = spawn("instance-r")  # start again: new qemu, new pidfile
    cycle = backend.sync([ref])
    key2 = backend.counter_key(UUID_A)
    assert key2 is not None and key2 != key1 and key2.startswith(f"perf/{second.pid}/")
    assert set(cycle.readings[UUID_A].mbm_total) == {key2}


def test_restart_between_two_polls_is_noticed(backend: PerfBackend, spawn: Spawn) -> None:
    first = spawn("instance-q")
    ref = InstanceRef(UUID_A, "instance-q")
    backend.sync([ref])
    key1 = backend.counter_key(UUID_A)
    first.close()
    second = spawn("instance-q")  # stop + start within one polling interval
    cycle = backend.sync([ref])
    assert UUID_A in cycle.readings
    assert backend.counter_key(UUID_A) != key1
    assert backend.tracked_tids(UUID_A) == second.tids()


def test_gone_and_foreign_processes_are_unmonitored(backend: PerfBackend, spawn: Spawn,
                                                    pid_dir: str) -> None:
    backend.sync([])
    before = open_fds()
    dead = Child("instance-dead", pid_dir)
    pidfile = dead.pidfile
    dead.pidfile = None  # keep the stale pidfile after the process ends
    dead.close()
    assert pidfile is not None
    write_pidfile(os.path.join(pid_dir, "instance-reused.pid"), os.getpid())
    cycle = backend.sync([
        InstanceRef(UUID_A, "instance-dead"),
        InstanceRef(UUID_B, "instance-reused"),
        InstanceRef("uuid-c", "no-such-instance"),
        InstanceRef("uuid-d", "../etc/passwd"),
    ])
    assert cycle.readings == {}
    assert set(cycle.unmonitored) == {UUID_A, UUID_B, "uuid-c", "uuid-d"}
    assert "gone" in cycle.unmonitored[UUID_A]
    assert "not the qemu" in cycle.unmonitored[UUID_B]
    assert "no pidfile" in cycle.unmonitored["uuid-c"]
    assert cycle.monitors_used == 0
    assert open_fds() == before


def test_fifo_or_directory_pidfile_is_unmonitored_without_blocking(
        backend: PerfBackend, pid_dir: str) -> None:
    """A FIFO in place of a pidfile must not block the cycle on open()."""
    fifo = os.path.join(pid_dir, "instance-fifo.pid")
    os.mkfifo(fifo)
    os.mkdir(os.path.join(pid_dir, "instance-dir.pid"))
    refs = [InstanceRef(UUID_A, "instance-fifo"), InstanceRef(UUID_B, "instance-dir")]
    backend.sync([])  # the pid directory's inotify fd
    before = open_fds()
    result: list[BackendCycle] = []
    worker = threading.Thread(target=lambda: result.append(backend.sync(refs)), daemon=True)
    worker.start()
    worker.join(30)
    if worker.is_alive():  # blocked in open(): a writer lets it go, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(30)
        pytest.fail("sync() blocked on a FIFO pidfile")
    cycle = result[0]
    assert cycle.readings == {}
    assert "not a regular file" in cycle.unmonitored[UUID_A]
    assert "not a regular file" in cycle.unmonitored[UUID_B]
    assert open_fds() == before


def test_fd_exhaustion_leaves_instance_unmonitored(backend: PerfBackend,
                                                   spawn: Spawn) -> None:
    spawn("instance-first")
    big = spawn("instance-big")
    for i in range(6):
        big.spawn(f"t{i}")
    first = InstanceRef(UUID_A, "instance-first")
    backend.sync([first])
    before = open_fds()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # room for 6 more fds (a few counters), not for 3 x 7 threads
    used = {int(f) for f in before}
    limit = 0
    while sum(1 for fd in range(limit) if fd not in used) < 6:
        limit += 1
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        cycle = backend.sync([first, InstanceRef(UUID_B, "instance-big")])
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert UUID_A in cycle.readings
    assert "file descriptors" in cycle.unmonitored[UUID_B]
    assert backend.tracked_fds(UUID_B) == []
    assert open_fds() == before  # the partial set was closed
    cycle = backend.sync([first, InstanceRef(UUID_B, "instance-big")])
    assert UUID_B in cycle.readings  # retried next cycle once fds are there


def test_permission_denied_is_backend_unavailable(pid_dir: str, spawn: Spawn) -> None:
    """As nobody, the root-owned stand-in qemu may not be counted: a clear error.
    The PMU's files are copied next to the pidfiles: nobody may not reach the
    checkout (below a 0700 home)."""
    spawn("instance-root")
    sysfs = os.path.join(pid_dir, "sys")
    shutil.copytree(SOFTWARE, sysfs)
    b = PerfBackend(sysfs, "/proc", pid_dir)
    def attempt() -> str:
        try:
            b.sync([InstanceRef(UUID_A, "instance-root")])
            return "SYNCED"
        except PerfPermissionError as e:
            return f"PERM {isinstance(e, BackendUnavailable)} {e}"

    out, _ = as_nobody(attempt)
    b.close()
    assert out.startswith("PERM True"), out
    assert "perf_event_paranoid" in out and "CAP_PERFMON" in out


def test_thousand_sync_cycles_leave_fds_unchanged(backend: PerfBackend,
                                                  spawn: Spawn) -> None:
    child = spawn("instance-cycle")
    child.spawn("worker")
    ref = InstanceRef(UUID_A, "instance-cycle")
    backend.sync([])
    before = open_fds()
    for _ in range(1000):
        assert UUID_A in backend.sync([ref]).readings
        backend.sync([])
    assert open_fds() == before
    assert backend.opens == backend.closes == 1000 * 3 * 2


def test_close_releases_everything(pid_dir: str, spawn: Spawn) -> None:
    spawn("instance-x")
    before = open_fds()
    b = PerfBackend(SOFTWARE, "/proc", pid_dir)
    b.sync([InstanceRef(UUID_A, "instance-x")])
    assert open_fds() != before
    b.close()
    assert open_fds() == before


def test_read_error_drops_only_that_instance(backend: PerfBackend, spawn: Spawn) -> None:
    spawn("instance-ok")
    spawn("instance-broken")
    refs = [InstanceRef(UUID_A, "instance-ok"), InstanceRef(UUID_B, "instance-broken")]
    backend.sync(refs)
    victim = backend.tracked_fds(UUID_B)[0]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, victim)  # same fd number, now unreadable: read() gives EBADF
    finally:
        os.close(devnull)
    cycle = backend.sync(refs)
    assert UUID_A in cycle.readings
    assert cycle.unmonitored[UUID_B].startswith("perf error")
    assert backend.tracked_fds(UUID_B) == []
    assert UUID_B in backend.sync(refs).readings  # reopened next cycle


def test_steady_state_does_not_list_the_pid_dir(backend: PerfBackend, spawn: Spawn,
                                                pid_dir: str) -> None:
    spawn("instance-s")
    ref = InstanceRef(UUID_A, "instance-s")
    backend.sync([ref])
    scans = backend._watch.scans
    for _ in range(20):
        assert UUID_A in backend.sync([ref]).readings
    assert backend._watch.scans == scans  # inotify said nothing changed
    Path(pid_dir, "other-domain.xml").write_text("<domstatus/>")
    backend.sync([ref])
    assert backend._watch.scans == scans + 1
    backend.sync([ref])
    assert backend._watch.scans == scans + 1


def test_missing_pid_dir_is_no_instance_running(tmp_path: Path) -> None:
    with PerfBackend(SOFTWARE, "/proc", str(tmp_path / "absent")) as b:
        for _ in range(2):
            cycle = b.sync([InstanceRef(UUID_A, "instance-1")])
            assert cycle.readings == {}
            assert "no pidfile" in cycle.unmonitored[UUID_A]


# ---------------------------------------------------------------- host, probe

def test_no_pmu_is_backend_unavailable(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable, match="4.14"):
        PerfBackend(str(tmp_path), "/proc", str(tmp_path))


def test_probe(pid_dir: str, tmp_path: Path) -> None:
    PerfBackend(SOFTWARE, "/proc", pid_dir).probe()
    shutil.copytree(SOFTWARE, tmp_path / "sys")
    (tmp_path / "sys" / PMU_REL / "type").write_text("2147418112\n")  # no such PMU
    with pytest.raises(PerfUnsupported):
        PerfBackend(str(tmp_path / "sys"), "/proc", pid_dir).probe()


def test_host_cache_from_sysfs(tmp_path: Path, pid_dir: str) -> None:
    root = tmp_path / "sys"
    shutil.copytree(SOFTWARE, root)
    for cpu, cache_id in ((0, 0), (1, 0), (2, 1), (3, 1)):
        idx = root / f"devices/system/cpu/cpu{cpu}/cache/index3"
        idx.mkdir(parents=True)
        for name, value in (("level", "3"), ("type", "Unified"), ("size", "35840K"),
                            ("id", str(cache_id)),
                            ("shared_cpu_list", "0-1" if cache_id == 0 else "2-3")):
            (idx / name).write_text(value + "\n")
    host = PerfBackend(str(root), "/proc", pid_dir).host_cache()
    assert [(d.id, d.size) for d in host.domains] == [(0, 35840 * 1024), (1, 35840 * 1024)]
    assert host.domain_size(ALL_DOMAINS) == 2 * 35840 * 1024
    real = PerfBackend("/sys", "/proc", pid_dir, pmu=perf_pmu.discover(SOFTWARE))
    assert real.host_cache() == read_host_cache("/sys")
