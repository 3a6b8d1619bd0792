"""How one batched read of perf counters becomes per-instance readings.

A polling cycle of the perf backend reads every counter fd of every instance
in one batch: one blob, 24 bytes per fd (``PERF_FORMAT_TOTAL_TIME_ENABLED |
PERF_FORMAT_TOTAL_TIME_RUNNING``): the count, the time enabled, the time
running. An empty read (the kernel's "event in error state") comes as 24 zero
bytes, like a counter that never ran. An instance has one counter per thread
and per role (occupancy, MBM total, MBM local). The rules:

* the counts of an instance's threads are summed per role;
* a counter that never ran (time running 0) or was multiplexed (running <
  enabled) adds nothing: on intel_cqm a never-run task event still reports
  its RMID's occupancy (``intel_cqm_event_count()`` reads the RMID whatever
  the task did), so its value must not count;
* a role none of whose counters qualifies is ``None``, never 0;
* a role's sum is multiplied by its byte factor (the PMU's ``.scale``).

:class:`ReadPlan` lays out the fds of all instances so that, when nothing is
multiplexed (always so for intel_cqm, a software-context PMU), these rules run
as loops in C over the whole batch (:meth:`ReadPlan.readings`); otherwise
:meth:`ReadPlan.careful` applies them counter by counter.
``tests/unit/backends/perf/test_counts.py`` checks both against a per-counter reference.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import compress
from operator import add, mul
from typing import NamedTuple, Protocol

from ceilometer_cmt.backends.perf.abi import READ_FORMAT, READ_SIZE
from ceilometer_cmt.readings import ALL_DOMAINS, InstanceReading

OCCUPANCY = "occupancy"
MBM_TOTAL = "mbm_total"
MBM_LOCAL = "mbm_local"
ROLES = (OCCUPANCY, MBM_TOTAL, MBM_LOCAL)

_ITER_UNPACK = READ_FORMAT.iter_unpack
#: ``(time running, sum)`` -> None when it never ran, else the sum (a C call)
_NONE_IF_ZERO = {0: None}.get


class Role(NamedTuple):
    """One event every instance counts, and its byte factor ``num / den``."""

    name: str  # one of ROLES
    num: int = 1
    den: int = 1


class Counted(Protocol):
    """What the plan needs of one instance."""

    @property
    def uuid(self) -> str: ...

    @property
    def key(self) -> str:
        """Its MBM counter key (see :class:`~ceilometer_cmt.readings.InstanceReading`)."""
        ...

    @property
    def all_fds(self) -> Sequence[int]:
        """Role after role (in the plan's role order), thread after thread."""
        ...

    @property
    def threads(self) -> int: ...


def sum_counts(data: bytes) -> int | None:
    """Sum of the usable counts of whole reads laid end to end (a counter that
    never ran or was multiplexed adds nothing); None when none is usable."""
    total = 0
    seen = False
    for value, enabled, running in _ITER_UNPACK(data):
        if running and running >= enabled:
            total += value
            seen = True
    return total if seen else None


@dataclass(frozen=True)
class SameThreadCount:
    """Instances with the same number of counted threads ``m``.

    Their fds sit in the plan from ``start`` to ``stop``, instance after
    instance, role after role, thread after thread: the count of role ``r`` of
    the group's ``i``-th instance is the sum of ``m`` consecutive values, and
    ``values[start + j:stop:m]`` takes the ``j``-th thread of every role at once.
    """

    m: int
    start: int
    stop: int
    uuids: tuple[str, ...]
    keys: tuple[str, ...]

    def running(self, times: Sequence[int], role: int, nroles: int) -> Iterable[int]:
        """Per instance, the time running of role ``role`` summed over its threads."""
        m = self.m
        return _strided_sums(times, self.start + role * m, self.stop, nroles * m, m)

    def sums(self, seq: Sequence[int]) -> list[int]:
        """Per role of every instance, the sum over its threads (loops in C)."""
        m, start, stop = self.m, self.start, self.stop
        if m > 4:  # one pass summing m-tuples beats m - 1 passes over slices
            part = iter(seq[start:stop])
            return list(map(sum, zip(*[part] * m, strict=True)))
        return list(_strided_sums(seq, start, stop, m, m))


def _strided_sums(seq: Sequence[int], first: int, stop: int, step: int,
                  m: int) -> Iterable[int]:
    """``seq[first + i*step] + ... + seq[first + i*step + m - 1]`` for each ``i``:
    m slices added element-wise, in C."""
    total: Iterable[int] = seq[first:stop:step]
    for j in range(1, m):
        total = map(add, total, seq[first + j:stop:step])
    return total


@dataclass(frozen=True)
class ReadPlan:
    """Every fd of every instance, for one batched read per cycle."""

    fds: tuple[int, ...]
    nbytes: int  # of the batch: READ_SIZE per fd
    values: Callable[[bytes], tuple[int, ...]]  # the counts of every fd
    running: Callable[[bytes], tuple[int, ...]]  # their time running
    zeros: tuple[int, ...]  # a count of 0 for every fd
    groups: tuple[SameThreadCount, ...]
    #: per instance: uuid, counter key, threads, where its reads start in the batch
    entries: tuple[tuple[str, str, int, int], ...]
    nroles: int
    slots: tuple[int, int, int]  # role index of occupancy/total/local, -1: absent
    scaled: tuple[tuple[int, int, int], ...]  # (role index, num, den)

    @classmethod
    def build(cls, instances: Iterable[Counted], roles: Sequence[Role]) -> ReadPlan:
        by_threads: dict[int, list[Counted]] = {}
        for inst in instances:
            by_threads.setdefault(inst.threads, []).append(inst)
        fds: list[int] = []
        groups = []
        entries = []
        for m, members in by_threads.items():
            start = len(fds)
            for inst in members:
                entries.append((inst.uuid, inst.key, m, len(fds) * READ_SIZE))
                fds.extend(inst.all_fds)
            groups.append(SameThreadCount(m, start, len(fds), tuple(i.uuid for i in members),
                                tuple(i.key for i in members)))
        names = [r.name for r in roles]
        n = len(fds)
        return cls(tuple(fds), READ_SIZE * n,
                   struct.Struct("=" + "Q16x" * n).unpack,
                   struct.Struct("=" + "16xQ" * n).unpack, (0,) * n,
                   tuple(groups), tuple(entries), len(roles),
                   (_slot(names, OCCUPANCY), _slot(names, MBM_TOTAL), _slot(names, MBM_LOCAL)),
                   tuple((i, r.num, r.den) for i, r in enumerate(roles) if r.num != r.den))

    def readings(self, data: bytes) -> dict[str, InstanceReading] | None:
        """The readings of a whole batch by loops in C, or None when some
        counter was multiplexed (then use :meth:`careful`)."""
        self._check(data)
        words = memoryview(data).cast("Q")
        if words[1::3] != words[2::3]:  # element-wise in C: something multiplexed
            return None
        values = self.values(data)
        times = self.running(data)
        unrun = None  # the times, when some counter never ran
        if 0 in times:
            unrun = times
            if times.count(0) == len(times):
                values = self.zeros  # no counter ran: every role is None
            elif sum(values) != sum(compress(values, times)):  # C loops, no calls
                # a counter that never ran kept a value: it counts for nothing
                values = tuple(map(mul, values, map(bool, times)))
        out: dict[str, InstanceReading] = {}
        for g in self.groups:
            self._group(g, values, unrun, out)
        return out

    def _group(self, g: SameThreadCount, values: Sequence[int], running: Sequence[int] | None,
               out: dict[str, InstanceReading]) -> None:
        """``running`` is given when some counter may never have run; ``values``
        then holds 0 for those."""
        nroles = self.nroles
        sums: list[int | None]
        if values is self.zeros:  # no counter ran: nothing to add up
            sums = [None] * (nroles * len(g.uuids))
        else:
            sums = g.sums(values)  # type: ignore[assignment]
            for i, num, den in self.scaled:
                sums[i::nroles] = [v * num // den for v in sums[i::nroles]]  # type: ignore[operator]
            if running is not None and 0 in sums:
                # a 0 is None when none of its counters ran; only roles with
                # a 0 are looked at (e.g. MBM of an idle guest)
                for r in range(nroles):
                    role = sums[r::nroles]
                    if 0 in role:
                        sums[r::nroles] = list(map(_NONE_IF_ZERO, g.running(running, r, nroles),
                                                   role))
        keys = g.keys
        occ, tot, loc = self.slots
        if occ >= 0 and tot >= 0 and loc >= 0:  # CMT and MBM: one pass
            out.update(zip(g.uuids, [
                InstanceReading({ALL_DOMAINS: o}, {k: t}, {k: lo})
                for k, o, t, lo in zip(keys, sums[occ::nroles], sums[tot::nroles],
                                       sums[loc::nroles], strict=True)], strict=True))
            return
        occupancy = ([{ALL_DOMAINS: v} for v in sums[occ::nroles]] if occ >= 0
                     else [{} for _ in keys])
        out.update(zip(g.uuids, map(InstanceReading, occupancy,
                                    _by_key(keys, sums, tot, nroles),
                                    _by_key(keys, sums, loc, nroles)), strict=True))

    def _check(self, data: bytes) -> None:
        if len(data) != self.nbytes:
            raise ValueError(f"a batch of {len(self.fds)} reads is {self.nbytes} bytes, "
                             f"not {len(data)}")

    def careful(self, data: bytes) -> dict[str, InstanceReading]:
        """The same rules, counter by counter."""
        self._check(data)
        out: dict[str, InstanceReading] = {}
        occ, tot, loc = self.slots
        for uuid, key, m, start in self.entries:
            step = m * READ_SIZE
            sums = [sum_counts(data[start + r * step:start + (r + 1) * step])
                    for r in range(self.nroles)]
            for i, num, den in self.scaled:
                v = sums[i]
                if v is not None:
                    sums[i] = v * num // den
            out[uuid] = InstanceReading(
                {ALL_DOMAINS: sums[occ]} if occ >= 0 else {},
                {key: sums[tot]} if tot >= 0 else {},
                {key: sums[loc]} if loc >= 0 else {})
        return out


def _by_key(keys: Sequence[str], sums: list[int | None], slot: int,
            nroles: int) -> list[dict[str, int | None]]:
    """``{counter key: value}`` of role ``slot`` for each instance ({} if absent)."""
    if slot < 0:
        return [{} for _ in keys]
    return [{k: v} for k, v in zip(keys, sums[slot::nroles], strict=True)]


def _slot(names: list[str], role: str) -> int:
    return names.index(role) if role in names else -1
