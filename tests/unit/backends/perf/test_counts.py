"""The perf backend's batched read against a per-counter reference.

Real stand-in qemu processes with different thread counts (so the batch has
several thread-count groups), opened through a counter provider whose reads
answer from a table the test fills: every (value, time_enabled, time_running)
a kernel can give, including counters that never ran but carry a stale value
(an intel_cqm RMID recycled from another task) and multiplexed ones. Every
reading must equal the reference rule: per role, the sum of the counters that
ran and were never multiplexed, ``None`` when no counter qualifies, the
occupancy multiplied by the PMU's ``.scale``.
"""

from __future__ import annotations

import random
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from ceilometer_cmt.backends.perf.abi import EventSpec
from ceilometer_cmt.backends.perf.backend import PerfBackend
from ceilometer_cmt.backends.perf.counts import sum_counts
from ceilometer_cmt.readings import ALL_DOMAINS, InstanceReading, InstanceRef
from ceilometer_cmt.testing.perf_child import Child
from tests.support.paths import SOFTWARE

PMU_REL = Path("bus/event_source/devices/intel_cqm")
PACK = struct.Struct("=QQQ").pack
SCALE = 64
#: extra threads per stand-in qemu: groups of 1, 3, 4 and 6 counted threads
#: (SameThreadCount.sums adds up to 4 threads by slices, more by tuples)
EXTRA_THREADS = (0, 2, 3, 2, 0, 5)


class TableCounters:
    """A CounterProvider answering reads from ``table`` (handle -> 24 bytes)."""

    def __init__(self) -> None:
        self.table: dict[int, bytes] = {}
        #: handle -> (domain name, role index, tid)
        self.owner: dict[int, tuple[str, int, int]] = {}
        self.reads = 0
        self._next = 10_000

    def open(self, specs: Sequence[EventSpec], pid: int, tid: int,
             domain_name: str) -> list[int]:
        handles = []
        for role in range(len(specs)):
            self._next += 1
            self.owner[self._next] = (domain_name, role, tid)
            self.table[self._next] = PACK(0, 0, 0)
            handles.append(self._next)
        return handles

    def read(self, handles: Sequence[int]) -> bytes:
        self.reads += 1
        return b"".join(self.table[h] for h in handles)

    def close(self, handles: Sequence[int]) -> None:
        for h in handles:
            del self.table[h]

    def probe(self, specs: Sequence[EventSpec]) -> None:
        pass


def reference(counters: TableCounters, domain: str, key: str) -> tuple[object, ...]:
    """What the reading of ``domain`` must be, counter by counter."""
    per_role: list[int | None] = [None, None, None]
    for h, (dom, role, _) in counters.owner.items():
        if dom != domain or h not in counters.table:
            continue
        value, enabled, running = struct.unpack("=QQQ", counters.table[h])
        if running and running >= enabled:
            per_role[role] = (per_role[role] or 0) + value
    occ, total, local = per_role
    return ({ALL_DOMAINS: None if occ is None else occ * SCALE}, {key: total}, {key: local})


def as_tuple(r: InstanceReading) -> tuple[object, ...]:
    return (r.occupancy, r.mbm_total, r.mbm_local)


@dataclass
class Host:
    backend: PerfBackend
    counters: TableCounters
    refs: list[InstanceRef]
    main_tids: set[int]  # the stand-in qemus' pids


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    tmp = Path(tempfile.mkdtemp(prefix="cmt-perf-batch-"))
    children: list[Child] = []
    counters = TableCounters()
    try:
        shutil.copytree(SOFTWARE, tmp / "sys")
        (tmp / "sys" / PMU_REL / "events" / "llc_occupancy.scale").write_text(f"{SCALE}\n")
        pid_dir = tmp / "pids"
        pid_dir.mkdir()
        refs = []
        for i, extra in enumerate(EXTRA_THREADS):
            name = f"instance-{i:08x}"
            child = Child(name, str(pid_dir))
            children.append(child)
            for t in range(extra):
                child.spawn(f"t{t}")
            refs.append(InstanceRef(f"00000000-0000-4000-8000-{i:012x}", name))
        backend = PerfBackend(str(tmp / "sys"), "/proc", str(pid_dir), counters=counters)
        try:
            assert backend.sync(refs).unmonitored == {}
            yield Host(backend, counters, refs, {c.pid for c in children})
        finally:
            backend.close()
    finally:
        for c in children:
            c.close()
        shutil.rmtree(tmp, ignore_errors=True)


def check(backend: PerfBackend, counters: TableCounters,
          refs: list[InstanceRef]) -> None:
    reads = counters.reads
    cycle = backend.sync(refs)
    assert counters.reads == reads + 1  # one batched read for every instance
    assert cycle.unmonitored == {}
    assert set(cycle.readings) == {r.uuid for r in refs}
    for ref in refs:
        key = backend.counter_key(ref.uuid)
        assert key is not None
        assert as_tuple(cycle.readings[ref.uuid]) == reference(
            counters, ref.domain_name, key), ref


def fill(counters: TableCounters, make: Callable[[str, int, int], bytes]) -> None:
    for h, (dom, role, tid) in counters.owner.items():
        if h in counters.table:
            counters.table[h] = make(dom, role, tid)


def test_thread_counts_differ_between_instances(host: Host) -> None:
    counted = {len(host.backend.tracked_tids(r.uuid)) for r in host.refs}
    assert sorted(counted) == [1, 3, 4, 6]


def test_every_counter_ran(host: Host) -> None:
    backend, counters, refs = host.backend, host.counters, host.refs
    fill(counters, lambda dom, role, tid: PACK(tid * 10 + role, 1000 + tid, 1000 + tid))
    check(backend, counters, refs)


def test_stale_value_of_a_counter_that_never_ran_is_left_out(
        host: Host) -> None:
    backend, counters, refs = host.backend, host.counters, host.refs

    def make(dom: str, role: int, tid: int) -> bytes:
        if tid in host.main_tids:
            return PACK(7 + role, 50, 50)
        return PACK(999_999, 0, 0)  # never ran: the value must not count

    fill(counters, make)
    check(backend, counters, refs)
    cycle = backend.sync(refs)
    assert all(r.occupancy[ALL_DOMAINS] == 7 * SCALE for r in cycle.readings.values())


def test_role_where_no_counter_ran_is_none_not_zero(
        host: Host) -> None:
    backend, counters, refs = host.backend, host.counters, host.refs
    fill(counters, lambda dom, role, tid: PACK(5, 9, 9) if role != 1 else PACK(0, 0, 0))
    check(backend, counters, refs)
    cycle = backend.sync(refs)
    for ref in refs:
        assert list(cycle.readings[ref.uuid].mbm_total.values()) == [None]
        assert cycle.readings[ref.uuid].occupancy[ALL_DOMAINS] is not None


def test_no_counter_ran_every_role_is_none_whatever_the_values(host: Host) -> None:
    backend, counters, refs = host.backend, host.counters, host.refs
    fill(counters, lambda dom, role, tid: PACK(999, 0, 0))  # stale RMID values only
    check(backend, counters, refs)
    for reading in backend.sync(refs).readings.values():
        assert reading.occupancy == {ALL_DOMAINS: None}
        assert list(reading.mbm_total.values()) == list(reading.mbm_local.values()) == [None]


def test_multiplexed_counter_is_left_out(
        host: Host) -> None:
    backend, counters, refs = host.backend, host.counters, host.refs
    fill(counters, lambda dom, role, tid: PACK(3, 10, 4 if role == 2 else 10))
    check(backend, counters, refs)


def test_random_tables_match_the_reference(
        host: Host) -> None:
    backend, counters, refs = host.backend, host.counters, host.refs
    rng = random.Random(20261129)
    for _ in range(300):
        p_never, p_mux = rng.choice([(0, 0), (0.3, 0), (0.9, 0), (0.2, 0.1), (1, 0)])

        def make(dom: str, role: int, tid: int, p_never: float = p_never,
                 p_mux: float = p_mux) -> bytes:
            value = rng.choice([0, 1, rng.randrange(1 << 40), (1 << 64) - 1 - rng.randrange(9)])
            if rng.random() < p_never:
                return PACK(value, 0, 0)
            enabled = rng.randrange(1, 1 << 62)
            running = rng.randrange(1, enabled) if rng.random() < p_mux else enabled
            return PACK(value, enabled, running)

        fill(counters, make)
        check(backend, counters, refs)


def test_a_batch_of_the_wrong_length_is_read_again_instance_by_instance(
        host: Host) -> None:
    """A provider (the privsep daemon, over its channel) that answers a batch with
    the wrong number of bytes: nothing is taken from that answer; each instance
    is read on its own, and only the one whose answer is still wrong is
    unmonitored (then reopened the next cycle)."""
    backend, counters, refs = host.backend, host.counters, host.refs
    fill(counters, lambda dom, role, tid: PACK(5, 9, 9))
    bad = refs[1]
    bad_handles = set(backend.tracked_fds(bad.uuid))
    whole = counters.read

    def read(handles: Sequence[int]) -> bytes:
        data = whole(handles)
        return data[:-1] if bad_handles & set(handles) else data

    counters.read = read  # type: ignore[method-assign]
    try:
        reads = counters.reads
        cycle = backend.sync(refs)
        assert counters.reads == reads + 1 + len(refs)  # the batch, then one per instance
        assert list(cycle.unmonitored) == [bad.uuid]
        assert "perf error" in cycle.unmonitored[bad.uuid]
        assert set(cycle.readings) == {r.uuid for r in refs} - {bad.uuid}
        for ref in refs:
            if ref != bad:
                key = backend.counter_key(ref.uuid)
                assert key is not None
                assert as_tuple(cycle.readings[ref.uuid]) == reference(
                    counters, ref.domain_name, key)
    finally:
        del counters.read
    assert backend.sync(refs).unmonitored == {}  # reopened
    fill(counters, lambda dom, role, tid: PACK(5, 9, 9))
    check(backend, counters, refs)


def test_a_provider_opening_too_many_counters_leaks_none(host: Host) -> None:
    """A provider that answers an open with one handle more than events asked:
    the instance is unmonitored with the reason, and every handle it gave,
    the extra one too, is closed again (then the instance is reopened)."""
    backend, counters, refs = host.backend, host.counters, host.refs
    bad = refs[2]
    whole_open = counters.open

    def open_one_more(specs: Sequence[EventSpec], pid: int, tid: int,
                      domain_name: str) -> list[int]:
        handles = whole_open(specs, pid, tid, domain_name)
        if domain_name == bad.domain_name:
            handles += whole_open(specs[:1], pid, tid, domain_name)
        return handles

    backend.close()  # every instance opens again
    counters.open = open_one_more  # type: ignore[method-assign]
    try:
        cycle = backend.sync(refs)
        assert list(cycle.unmonitored) == [bad.uuid]
        assert "4 counters opened for 3 events" in cycle.unmonitored[bad.uuid]
        assert not [h for h, (dom, _, _) in counters.owner.items()
                    if dom == bad.domain_name and h in counters.table]
        assert backend.opens == backend.closes + sum(
            len(backend.tracked_fds(r.uuid)) for r in refs)
    finally:
        del counters.open
    assert backend.sync(refs).unmonitored == {}
    fill(counters, lambda dom, role, tid: PACK(5, 9, 9))
    check(backend, counters, refs)


def test_sum_of_mixed_counters() -> None:
    """The careful path: never-run (also an empty read, which a batch holds as
    zeros) and multiplexed counters add nothing."""
    pack = struct.Struct("=QQQ").pack
    assert sum_counts(pack(5, 10, 10) + pack(7, 3, 3)) == 12
    assert sum_counts(pack(5, 10, 10) + pack(100, 10, 4) + bytes(24) + pack(9, 0, 0)) == 5
    assert sum_counts(pack(100, 10, 4) + bytes(24)) is None
    assert sum_counts(b"") is None
