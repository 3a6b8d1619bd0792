"""The perf_event_attr layout and sizes, down to real perf_event_open calls."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator

import pytest

from ceilometer_cmt.backends.perf import abi, counter_fds
from ceilometer_cmt.testing.perf_child import Child

TASK_CLOCK = abi.EventSpec(abi.PERF_TYPE_SOFTWARE, abi.PERF_COUNT_SW_TASK_CLOCK)


@pytest.fixture
def child() -> Iterator[Child]:
    with Child() as c:
        yield c


def test_attr_layout_matches_uapi_header() -> None:
    a = abi.PerfEventAttr
    assert ctypes.sizeof(a) == abi.PERF_ATTR_SIZE_VER7 == 128
    offsets = {name: getattr(a, name).offset for name, _ in a._fields_}
    assert offsets["config"] == 8
    assert offsets["read_format"] == 32
    assert offsets["flags"] == 40
    assert offsets["wakeup_events"] == 48
    assert offsets["config1"] == 56 and offsets["config1"] + 8 == abi.PERF_ATTR_SIZE_VER0
    assert offsets["config2"] + 8 == abi.PERF_ATTR_SIZE_VER1
    assert offsets["branch_sample_type"] + 8 == abi.PERF_ATTR_SIZE_VER2
    assert offsets["clockid"] + 4 == abi.PERF_ATTR_SIZE_VER3
    assert offsets["sample_regs_intr"] + 8 == abi.PERF_ATTR_SIZE_VER4
    assert offsets["reserved_2"] + 2 == abi.PERF_ATTR_SIZE_VER5
    assert offsets["reserved_3"] + 4 == abi.PERF_ATTR_SIZE_VER6


def test_attr_size_is_the_smallest_version_that_fits() -> None:
    assert abi.attr_size_for(TASK_CLOCK) == 64
    with_config2 = abi.EventSpec(7, 1, config2=5)
    assert abi.attr_size_for(with_config2) == 72
    attr = abi.make_attr(with_config2)
    assert (attr.size, attr.config2) == (72, 5)
    with pytest.raises(ValueError):
        abi.make_attr(with_config2, size=64)
    with pytest.raises(ValueError):
        abi.make_attr(TASK_CLOCK, size=65)
    attr = abi.make_attr(TASK_CLOCK)
    assert attr.flags == abi.ATTR_DISABLED | abi.ATTR_INHERIT
    assert attr.read_format == 3


@pytest.mark.parametrize("size", abi.ATTR_SIZES)
def test_every_attr_size_opens(child: Child, size: int) -> None:
    with counter_fds.Counter(TASK_CLOCK, child.pid, attr_size=size) as c:
        assert c.fd >= 0
