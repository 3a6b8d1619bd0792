"""Monotonic byte counters and rates from raw MBM counter readings.

A backend reports each hardware counter under a key. Counters reset to 0
when a monitor group is recreated (and a recreated perf counter gets a new
key). :class:`ByteCounter` keeps the published cumulative value monotonic for
the agent's lifetime by carrying an offset, and gives a rate only between two
consecutive complete reads without a reset.

The same holds for Intel AET telemetry counters (energy, cycles, uops), with
one difference: they belong to the RMID, not the group, and the kernel resets
nothing when a group gets an RMID, so a new counter may start at an earlier
owner's count. ``ByteCounter(count_new=False)`` takes a new counter's first
value as its baseline instead of counting it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple


class CounterValue(NamedTuple):  # a tuple: made twice per instance and cycle
    cumulative: int | None  # bytes since first seen; None: no complete read now
    rate: float | None  # bytes/s since the previous read; None: first read, reset, gap


class ByteCounter:
    def __init__(self, min_interval: float = 0.0, *, count_new: bool = True) -> None:
        self.min_interval = min_interval
        #: a new counter's first value: counted (MBM: a new group starts at 0),
        #: or only its baseline (AET: an RMID's counts outlive its group)
        self.count_new = count_new
        self._last: dict[str, int] = {}
        self._total = 0
        self._last_time: float | None = None
        self._last_cumulative: int | None = None
        self.resets = 0

    def update(self, raw: Mapping[str, int | None], now: float) -> CounterValue:
        if not raw:
            return CounterValue(None, None)
        last = self._last
        if raw.keys() == last.keys() and None not in raw.values():
            # Steady state: the same counters, all present; none went back.
            delta = 0
            for key, value in raw.items():
                prev = last[key]
                if value < prev:  # type: ignore[operator]
                    break
                delta += value - prev  # type: ignore[operator]
            else:
                last.update(raw)  # type: ignore[arg-type]
                self._total += delta
                return self._emit(now, reset=False)
        return self._update_slow(raw, now)

    def _update_slow(self, raw: Mapping[str, int | None], now: float) -> CounterValue:
        complete = all(v is not None for v in raw.values())
        reset = set(raw) != set(self._last) or not complete
        for key, value in raw.items():
            if value is None:
                continue
            prev = self._last.get(key)
            if prev is None:
                if self.count_new:
                    self._total += value  # a new counter: all it counted is new to us
            elif value >= prev:
                self._total += value - prev
            else:  # the counter restarted (group recreated, hardware reset)
                self._total += value
                self.resets += 1
                reset = True
            self._last[key] = value
        for key in [k for k in self._last if k not in raw]:
            del self._last[key]
        if not complete:
            # Part of the counters gave nothing: the sum would undercount.
            self._last_time = None
            return CounterValue(None, None)
        return self._emit(now, reset)

    def _emit(self, now: float, reset: bool) -> CounterValue:
        rate = None
        if (not reset and self._last_time is not None
                and self._last_cumulative is not None):
            dt = now - self._last_time
            if dt <= self.min_interval:
                return CounterValue(self._total, None)  # keep the older baseline
            rate = (self._total - self._last_cumulative) / dt
        self._last_time = now
        self._last_cumulative = self._total
        return CounterValue(self._total, rate)
