"""simulator.runner without FUSE: its waits (tenacity) and their errors.

Mounting is tested in tests/functional/test_simulator_fuse.py."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from ceilometer_cmt.simulator.runner import Simulator, _poll_until
from ceilometer_cmt.testing.wait import wait_until


def test_poll_until_is_true_once_the_check_is() -> None:
    looks: list[int] = []

    def third() -> bool:
        looks.append(1)
        return len(looks) == 3

    assert _poll_until(third, timeout=10, interval=0.001)
    assert len(looks) == 3


def test_poll_until_is_false_after_the_timeout() -> None:
    t0 = time.monotonic()
    assert not _poll_until(lambda: False, timeout=0.1, interval=0.01)
    assert 0.1 <= time.monotonic() - t0 < 5


def test_poll_until_lets_an_exception_through_at_once() -> None:
    looks: list[int] = []

    def broken() -> bool:
        looks.append(1)
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        _poll_until(broken, timeout=60, interval=0.001)
    assert looks == [1]


def _started(tmp_path: Path, code: str, timeout: float) -> Simulator:
    """A Simulator whose child is ``python -c code``: no FUSE, no mount."""
    sim = Simulator(str(tmp_path / "mnt"), timeout=timeout)
    sim.control_path = str(tmp_path / "control.sock")
    sim._log_path = str(tmp_path / "simulator.log")
    with open(sim._log_path, "wb") as log:
        sim._proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=subprocess.STDOUT)
    return sim


def test_a_child_that_exits_is_reported_at_once_with_its_log(tmp_path: Path) -> None:
    sim = _started(tmp_path, "import sys; print('no fuse for you'); sys.exit(3)", 60)
    t0 = time.monotonic()
    try:
        with pytest.raises(RuntimeError,
                           match=r"^resctrl simulator exited with 3:\nno fuse for you\n$"):
            sim._wait_ready()
    finally:
        sim.stop()
    assert time.monotonic() - t0 < 30


def test_a_child_that_never_mounts_times_out_with_its_log(tmp_path: Path) -> None:
    sim = _started(tmp_path, "import time; print('mounting', flush=True); time.sleep(60)",
                   0.5)
    try:
        wait_until(lambda: Path(sim._log_path).read_text() == "mounting\n",
                   what="the child's first line", timeout=60, interval=0.01)
        with pytest.raises(RuntimeError,
                           match=r"^resctrl simulator did not mount in time:\nmounting\n$"):
            sim._wait_ready()
    finally:
        sim.stop()
    assert sim.pid is None

