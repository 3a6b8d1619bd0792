"""CountedInstance: the counter key, the handles in batch order, and close."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from ceilometer_cmt.backends.perf.abi import EventSpec
from ceilometer_cmt.backends.perf.counted_instance import CountedInstance, EventFds


class Closes:
    """A provider that only records what it is asked to close."""

    def __init__(self) -> None:
        self.closed: list[list[int]] = []

    def open(self, specs: Sequence[EventSpec], pid: int, tid: int,
             domain_name: str) -> list[int]:
        raise AssertionError("not used")

    def read(self, handles: Sequence[int]) -> bytes:
        raise AssertionError("not used")

    def close(self, handles: Sequence[int]) -> None:
        self.closed.append(list(handles))

    def probe(self, specs: Sequence[EventSpec]) -> None:
        raise AssertionError("not used")


def counted(tmp_path: Path) -> CountedInstance:
    pidfile = tmp_path / "instance-1.pid"
    pidfile.write_text("4242\n")
    fd = os.open(pidfile, os.O_RDONLY)
    t = CountedInstance("uuid-1", "instance-1", pidfile.name, 4242, fd,
                        os.fstat(fd).st_ino, generation=7)
    t.roles.extend([EventFds("llc_occupancy", [10, 11]), EventFds("mbm_total", [20, 21])])
    t.tids.update({4242, 4243})
    return t


def test_key_and_handles_in_batch_order(tmp_path: Path) -> None:
    t = counted(tmp_path)
    try:
        assert t.key == ""  # not before every counter is open
        t.freeze()
        assert t.key == "perf/4242/7"
        assert t.all_fds == [10, 11, 20, 21]  # role after role
        assert t.threads == 2
    finally:
        t.close(Closes())


def test_close_releases_handles_and_pidfile_once(tmp_path: Path) -> None:
    t = counted(tmp_path)
    fd = t.pidfile_fd
    provider = Closes()
    assert t.close(provider) == 4
    assert provider.closed == [[10, 11, 20, 21]]
    assert t.pidfile_fd == -1 and t.all_fds == []
    with pytest.raises(OSError):
        os.fstat(fd)
    assert t.close(provider) == 0  # again: nothing left, the provider not called
    assert provider.closed == [[10, 11, 20, 21]]
