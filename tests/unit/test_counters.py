"""ByteCounter: monotonic cumulative bytes and rates from raw MBM counters."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ceilometer_cmt.counters import ByteCounter, CounterValue

Raw = dict[str, int | None]


def test_first_read_has_no_rate() -> None:
    c = ByteCounter()
    assert c.update({"/0": 1000, "/1": 500}, 10.0) == CounterValue(1500, None)
    assert c.update({"/0": 3000, "/1": 500}, 12.0) == CounterValue(3500, 1000.0)


def test_reset_carries_offset_and_gives_no_rate() -> None:
    c = ByteCounter()
    c.update({"/0": 1000}, 0.0)
    c.update({"/0": 2000}, 1.0)
    v = c.update({"/0": 100}, 2.0)  # group recreated: counter restarted
    assert v == CounterValue(2100, None) and c.resets == 1
    assert c.update({"/0": 400}, 4.0) == CounterValue(2400, 150.0)


def test_none_gives_nothing_then_no_rate() -> None:
    c = ByteCounter()
    c.update({"/0": 1000, "/1": 10}, 0.0)
    assert c.update({"/0": 1500, "/1": None}, 1.0) == CounterValue(None, None)
    # the bytes counted meanwhile are not lost, but the next read has no rate
    assert c.update({"/0": 2000, "/1": 20}, 2.0) == CounterValue(2020, None)
    assert c.update({"/0": 2100, "/1": 20}, 3.0) == CounterValue(2120, 100.0)


def test_keys_appearing_and_disappearing() -> None:
    c = ByteCounter()
    c.update({"/0": 100}, 0.0)
    assert c.update({"/0": 200, "ctl/0": 50}, 1.0) == CounterValue(250, None)  # new key
    assert c.update({"/0": 300, "ctl/0": 70}, 2.0) == CounterValue(370, 120.0)
    assert c.update({"ctl/0": 80}, 3.0) == CounterValue(380, None)  # a key went away
    assert c.update({"ctl/0": 90}, 4.0) == CounterValue(390, 10.0)


def test_empty_reading_means_feature_absent() -> None:
    c = ByteCounter()
    assert c.update({}, 0.0) == CounterValue(None, None)
    c.update({"/0": 100}, 1.0)
    assert c.update({}, 2.0) == CounterValue(None, None)


def test_min_interval_keeps_the_older_baseline() -> None:
    c = ByteCounter(min_interval=1.0)
    c.update({"/0": 0}, 0.0)
    assert c.update({"/0": 100}, 0.5) == CounterValue(100, None)
    assert c.update({"/0": 300}, 2.0) == CounterValue(300, 150.0)
    assert c.update({"/0": 300}, 2.0 + 1e-9) == CounterValue(300, None)


def test_zero_interval_gives_no_rate() -> None:
    c = ByteCounter()
    c.update({"/0": 0}, 5.0)
    assert c.update({"/0": 100}, 5.0) == CounterValue(100, None)
    assert c.update({"/0": 200}, 6.0) == CounterValue(200, 200.0)


def test_huge_counters() -> None:
    c = ByteCounter()
    big = 2**62
    c.update({"/0": big}, 0.0)
    assert c.update({"/0": big + 2**40}, 1.0) == CounterValue(big + 2**40, float(2**40))


# ----------------------------------------------------------------- properties
KEYS = ("/0", "/1", "ctl/0")


@dataclass
class Step:
    raw: Raw
    dt: float


@st.composite
def sequences(draw: st.DrawFn) -> list[Step]:
    """Raw readings as hardware gives them: counters grow, sometimes restart,
    sometimes give no value, keys come and go."""
    current: dict[str, int] = {}
    steps = []
    for _ in range(draw(st.integers(1, 25))):
        raw: Raw = {}
        for key in KEYS:
            action = draw(st.sampled_from(
                ["grow", "grow", "grow", "same", "reset", "none", "absent", "wild"]))
            if action == "absent":
                continue
            if action == "none":
                raw[key] = None
                continue
            value = current.get(key, draw(st.integers(0, 10**6)))
            if action == "grow":
                value += draw(st.integers(0, 10**9))
            elif action == "reset":
                value = draw(st.integers(0, 1000))
            elif action == "wild":
                value = draw(st.integers(0, 2**64 - 1))
            current[key] = value
            raw[key] = value
        dt = draw(st.sampled_from([0.5, 1.0, 10.0, 300.0]) | st.floats(0.001, 1000))
        steps.append(Step(raw, dt))
    return steps


@given(sequences())
@example([Step({"/0": 5}, 1.0), Step({"/0": None}, 1.0), Step({"/0": 3}, 1.0)])
@example([Step({"/0": 5, "/1": 7}, 1.0), Step({"/0": 6}, 1.0), Step({"/0": 6, "/1": 8}, 1.0)])
@example([Step({}, 1.0), Step({"/0": 1}, 1.0), Step({}, 1.0), Step({"/0": 2}, 1.0)])
def test_counter_properties(steps: list[Step]) -> None:
    c = ByteCounter()
    now = 1000.0
    last_cum: int | None = None  # last published cumulative
    # previous non-empty read: (its values if complete else None, cumulative, time)
    prev: tuple[dict[str, int] | None, int | None, float] | None = None
    for step in steps:
        now += step.dt
        v = c.update(step.raw, now)
        values = {k: x for k, x in step.raw.items() if x is not None}
        complete = bool(step.raw) and len(values) == len(step.raw)
        # no value unless every counter gave one
        assert (v.cumulative is not None) == complete
        if v.cumulative is not None:
            assert v.cumulative >= 0
            # monotonic for the counter's lifetime, whatever the raw values did
            if last_cum is not None:
                assert v.cumulative >= last_cum
            last_cum = v.cumulative
        if not step.raw:
            assert v == CounterValue(None, None)
            continue  # feature absent this time: state unchanged
        before = prev[0] if prev is not None else None
        if (prev is None or before is None or not complete or set(before) != set(values)
                or any(values[k] < before[k] for k in values)):
            # first read, a None now or just before, a key change, or a reset
            assert v.rate is None
        else:
            assert prev[1] is not None and v.cumulative is not None
            delta = sum(values[k] - before[k] for k in values)
            assert v.cumulative - prev[1] == delta
            dt = now - prev[2]
            assert v.rate is not None
            assert v.rate == pytest.approx(delta / dt, rel=1e-9)
            assert v.rate >= 0
        prev = (values if complete else None, v.cumulative, now)


@given(st.lists(st.integers(0, 10**12), min_size=1, max_size=30).map(sorted),
       st.lists(st.integers(0, 10**12), min_size=1, max_size=30).map(sorted))
def test_steady_counters_sum_the_raw_values(a: list[int], b: list[int]) -> None:
    """Counters that only grow: cumulative is exactly the sum of the raw values."""
    c = ByteCounter()
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        v = c.update({"/0": x, "/1": y}, float(i))
        assert v.cumulative == x + y
        assert (v.rate is None) == (i == 0)
        if i:
            assert v.rate == pytest.approx((x + y) - (a[i - 1] + b[i - 1]))
    assert c.resets == 0


@given(st.lists(st.integers(0, 10**9), min_size=2, max_size=30))
def test_resets_are_counted_and_never_lose_bytes(values: list[int]) -> None:
    """Single counter, arbitrary raw values: the total is the sum of the positive
    steps plus, at every restart, everything the new counter counted."""
    c = ByteCounter()
    expected = values[0]
    resets = 0
    c.update({"/0": values[0]}, 0.0)
    for i in range(1, len(values)):
        cur, before = values[i], values[i - 1]
        if cur >= before:
            expected += cur - before
        else:
            expected += cur
            resets += 1
        v = c.update({"/0": cur}, float(i))
        assert v.cumulative == expected
        assert (v.rate is None) == (cur < before)
    assert c.resets == resets
