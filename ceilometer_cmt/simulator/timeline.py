"""Scenario time: the clock of ``clock: manual`` scenarios, and the
timelines that give a load's value at any time and its integral over any
interval (linear or step interpolation, optionally repeating).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


class ManualClock:
    """A clock that moves only when told (``clock: manual`` scenarios)."""

    def __init__(self) -> None:
        self._t = 0.0

    def __call__(self) -> float:
        return self._t

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time does not go back")
        self._t += seconds


@dataclass(frozen=True)
class Point:
    t: float
    values: Mapping[tuple[str, int], float]  # (metric, domain) -> value


@dataclass(frozen=True)
class Timeline:
    points: tuple[Point, ...]
    interpolate: str = "linear"
    repeat: bool = False

    @property
    def period(self) -> float:
        return self.points[-1].t if self.points else 0.0

    def _local(self, t: float) -> float:
        if self.repeat and self.period > 0 and t > self.period:
            return t % self.period
        return t

    def has(self, metric: str) -> bool:
        """Whether any point gives ``metric`` a value."""
        return any(key[0] == metric for p in self.points for key in p.values)

    def value(self, metric: str, domain: int, t: float) -> float:
        if not self.points:
            return 0.0
        t = self._local(t)
        key = (metric, domain)
        pts = self.points
        if t <= pts[0].t:
            return pts[0].values.get(key, 0.0)
        for a, b in zip(pts, pts[1:], strict=False):
            if a.t <= t < b.t:
                va = a.values.get(key, 0.0)
                if self.interpolate == "step":
                    return va
                vb = b.values.get(key, 0.0)
                return va + (vb - va) * (t - a.t) / (b.t - a.t)
        return pts[-1].values.get(key, 0.0)

    def _cumulative(self, metric: str, domain: int, t: float) -> float:
        """Integral of the value from 0 to ``t`` (no repetition)."""
        pts = self.points
        key = (metric, domain)
        if not pts or t <= 0:
            return 0.0
        total = 0.0
        first = pts[0]
        if t <= first.t:
            return first.values.get(key, 0.0) * t
        total += first.values.get(key, 0.0) * max(first.t, 0.0)
        for a, b in zip(pts, pts[1:], strict=False):
            if t <= a.t:
                break
            end = min(t, b.t)
            va = a.values.get(key, 0.0)
            if self.interpolate == "step":
                total += va * (end - a.t)
            else:
                vb = b.values.get(key, 0.0)
                v_end = va + (vb - va) * (end - a.t) / (b.t - a.t)
                total += (va + v_end) / 2 * (end - a.t)
        if t > pts[-1].t:
            total += pts[-1].values.get(key, 0.0) * (t - pts[-1].t)
        return total

    def integral(self, metric: str, domain: int, t0: float, t1: float) -> float:
        """Integral of the value over ``[t0, t1]``, repetition included."""
        if t1 <= t0 or not self.points:
            return 0.0
        return self._total(metric, domain, t1) - self._total(metric, domain, t0)

    def _total(self, metric: str, domain: int, t: float) -> float:
        period = self.period
        if self.repeat and period > 0 and t > period:
            cycles, rest = divmod(t, period)
            return cycles * self._cumulative(metric, domain, period) + self._cumulative(
                metric, domain, rest
            )
        return self._cumulative(metric, domain, t)
